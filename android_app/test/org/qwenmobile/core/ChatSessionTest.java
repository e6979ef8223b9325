package org.qwenmobile.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.io.PipedInputStream;
import java.io.PipedOutputStream;
import java.io.PrintStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/**
 * The client and chat logic against a scripted runner speaking the protocol over pipes with SERVE.md's bookkeeping
 * (the last sampled token pending, fed by the runner before the next prompt): the ids a two-turn chat feeds must be
 * exactly the nano ids of the same conversation rendered by runtime/chat.py (shared vector).
 */
public class ChatSessionTest {
    /** A scripted runner: answers generate with the next canned reply; pending token and position as SERVE.md says. */
    static final class FakeRunner extends Thread {
        final PipedInputStream toApp = new PipedInputStream(1 << 16);
        final PipedOutputStream fromApp = new PipedOutputStream();
        final List<int[]> replies = new ArrayList<int[]>();
        final List<Map<String, Object>> requests = new ArrayList<Map<String, Object>>();
        final List<Integer> consumed = new ArrayList<Integer>();  // every token fed to the "model", in order
        Integer pending;
        int position;
        int imageTokenId = 150;
        int imageTokens;  // what the runner expands a generate's one image token to (SERVE.md)
        PrintStream out;
        BufferedReader in;

        FakeRunner() throws Exception {
            out = new PrintStream(new PipedOutputStream(toApp), true, "UTF-8");
            in = new BufferedReader(new InputStreamReader(new PipedInputStream(fromApp, 1 << 16), "UTF-8"));
            setDaemon(true);
        }

        @Override
        public void run() {
            try {
                out.println("{\"event\":\"ready\",\"protocol\":1,\"bundle\":\"/b\",\"model\":\"nano\",\"recipe\":\"x\","
                        + "\"vocab_size\":8192,\"max_seq_len\":512,\"max_prefill_tokens\":64,\"stop_ids\":[8168],"
                        + "\"threads\":2}");
                String line;
                int turn = 0;
                while ((line = in.readLine()) != null) {
                    Map<String, Object> r = Json.parseObject(line);
                    requests.add(r);
                    Object id = r.get("id");
                    String op = (String) r.get("op");
                    if (op.equals("generate")) {
                        if (!Boolean.TRUE.equals(r.get("continue"))) {
                            position = 0;
                            pending = null;
                            consumed.clear();
                        }
                        int[] prompt = Json.intArray(r.get("prompt_ids"), "p");
                        if (prompt.length > 0 && prompt[0] == 999999) {
                            out.println("{\"event\":\"error\",\"id\":" + id + ",\"message\":\"prompt_ids: token 999999"
                                    + " is outside the vocabulary 0..8191\"}");
                            continue;
                        }
                        int[] reply = replies.get(turn++);
                        for (int i = 0; i < reply.length; i++) {
                            out.println("{\"event\":\"token\",\"id\":" + id + ",\"token\":" + reply[i] + ",\"index\":" + i
                                    + ",\"ms\":" + (i == 0 ? 40 : 10) + "}");
                        }
                        boolean image = r.get("image") != null;
                        if (pending != null) consumed.add(pending);
                        for (int x : prompt) {
                            for (int k = 0; k < (image && x == imageTokenId ? imageTokens : 1); k++) consumed.add(x);
                        }
                        for (int k = 0; k + 1 < reply.length; k++) consumed.add(reply[k]);
                        pending = reply[reply.length - 1];
                        position = consumed.size();
                        out.println("{\"event\":\"done\",\"id\":" + id + ",\"tokens\":" + Json.write(Json.list(reply))
                                + ",\"stop_reason\":\"stop_id\",\"prompt_tokens\":" + prompt.length + ",\"position\":"
                                + position + ",\"ttft_ms\":40,\"prefill_tok_s\":100,\"decode_tok_s\":100"
                                + (image ? ",\"image_encode_ms\":25,\"image_tokens\":" + imageTokens : "") + "}");
                    } else if (op.equals("reset")) {
                        position = 0;
                        pending = null;
                        consumed.clear();
                        out.println("{\"event\":\"ok\",\"id\":" + id + ",\"op\":\"reset\",\"position\":0}");
                    } else if (op.equals("save")) {
                        out.println("{\"event\":\"ok\",\"id\":" + id + ",\"op\":\"save\",\"path\":\"p\",\"bytes\":10}");
                    } else if (op.equals("load")) {
                        out.println("{\"event\":\"ok\",\"id\":" + id + ",\"op\":\"load\",\"position\":" + position + "}");
                    } else if (op.equals("quit")) {
                        out.println("{\"event\":\"bye\",\"id\":" + id + "}");
                        out.close();
                        return;
                    } else {
                        out.println("{\"event\":\"error\",\"id\":" + id + ",\"message\":\"op: unknown '" + op + "'\"}");
                    }
                }
            } catch (Exception e) {
                e.printStackTrace();
            }
        }
    }

    private static int[] concat(int[]... parts) {
        int n = 0;
        for (int[] p : parts) n += p.length;
        int[] out = new int[n];
        int k = 0;
        for (int[] p : parts) {
            System.arraycopy(p, 0, out, k, p.length);
            k += p.length;
        }
        return out;
    }

    @Test
    public void twoTurnsFeedThePythonTemplatesIds() throws Exception {
        BpeTokenizer nano = BpeTokenizer.fromFile(TestFiles.file("models/nano/tokenizer.json"));
        // Vector case 3: system, user "Hi", assistant "Hello.", user "Name a colour.", thinking off.
        Map<String, Object> vec = Json.obj(Json.arr(TestFiles.json("tests/apps/vectors/chat_template.json").get("cases"),
                "cases").get(3), "case");
        int[] want = Json.intArray(vec.get("ids_nano"), "ids_nano");
        int imEnd = nano.tokenToId("<|im_end|>");
        FakeRunner runner = new FakeRunner();
        int[] reply1 = concat(nano.encode("Hello."), new int[] {imEnd});
        runner.replies.add(reply1);
        int[] reply2 = concat(nano.encode("Blue."), new int[] {imEnd});
        runner.replies.add(reply2);
        ServeClient client = new ServeClient(runner.toApp, runner.fromApp);
        runner.start();
        ServeProtocol.Ready ready = client.awaitReady();
        ChatSession chat = new ChatSession(client, nano, ready.stopIds, false);
        chat.systemPrompt = "You are terse.";
        final StringBuilder streamed = new StringBuilder();
        ChatSession.Reply r1 = chat.send("Hi", new ChatSession.Listener() {
            @Override
            public void onText(String text) {
                streamed.append(text);
            }
        });
        assertEquals("Hello.", r1.text);
        assertEquals("Hello.", streamed.toString());
        ChatSession.Reply r2 = chat.send("Name a colour.", null);
        assertEquals("Blue.", r2.text);
        int[] p1 = Json.intArray(runner.requests.get(0).get("prompt_ids"), "p");
        int[] p2 = Json.intArray(runner.requests.get(1).get("prompt_ids"), "p");
        assertEquals(Boolean.FALSE, runner.requests.get(0).get("continue"));
        assertEquals(Boolean.TRUE, runner.requests.get(1).get("continue"));
        // Turn 2's prompt does not repeat the pending <|im_end|>: the runner feeds it.
        assertArrayEquals(nano.encode("\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
                + "<think>\n\n</think>\n\n"), p2);
        // What the model consumed through turn 2's prefill = the whole conversation's ids from the Python template.
        int[] fed = new int[want.length];
        for (int k = 0; k < want.length; k++) fed[k] = runner.consumed.get(k);
        assertArrayEquals(want, fed);
        assertArrayEquals(concat(p1, reply1, p2), fed);
        assertEquals(want.length + reply2.length - 1, chat.position());

        File snap = File.createTempFile("chat", ".state");
        chat.save(snap.getPath());
        chat.reset();
        assertEquals(0, chat.position());
        client.quit();
    }

    @Test
    public void aTurnWithAnImageSendsOneImageTokenAndCountsItsExpansion() throws Exception {
        BpeTokenizer nano = BpeTokenizer.fromFile(TestFiles.file("models/nano/tokenizer.json"));
        int imEnd = nano.tokenToId("<|im_end|>");
        FakeRunner runner = new FakeRunner();
        runner.imageTokens = 98;
        int[] reply1 = concat(nano.encode("A cat."), new int[] {imEnd});
        int[] reply2 = concat(nano.encode("Grey."), new int[] {imEnd});
        runner.replies.add(reply1);
        runner.replies.add(reply2);
        ServeClient client = new ServeClient(runner.toApp, runner.fromApp);
        runner.start();
        ChatSession chat = new ChatSession(client, nano, client.awaitReady().stopIds, false);
        byte[] rgb = new byte[224 * 448 * 3];
        rgb[5] = 77;
        ImageInput wrongSize = new ImageInput(448, 448, new byte[448 * 448 * 3]);
        try {
            chat.send("What is this?", wrongSize, null);
            fail("an image on a bundle without a vision section was sent");
        } catch (IllegalArgumentException e) {
            assertEquals("image: this bundle has no vision section; it takes no images", e.getMessage());
        }
        Map<String, Object> manifest = ImageInputTest.goodManifest();
        manifest.put("vision", ImageInputTest.visionSection());
        chat.vision = Bundle.fromManifest(new File("."), manifest,
                new JsonSchema(TestFiles.json("runtime/schemas/manifest.schema.json")), "b").vision();
        try {
            chat.send("What is this?", wrongSize, null);
            fail("an image at a size the bundle does not encode was sent");
        } catch (IllegalArgumentException e) {
            assertEquals("image: 448x448 (HxW) pixels; this bundle encodes [224x224, 224x448] (HxW) only: scale it to "
                    + "vision.sizeFor(height, width) first", e.getMessage());
        }
        assertEquals(0, runner.requests.size());
        ChatSession.Reply r1 = chat.send("What is this?", new ImageInput(448, 224, rgb), null);
        assertEquals("A cat.", r1.text);
        assertEquals(25.0, r1.done.imageEncodeMs, 0);
        Map<String, Object> request = runner.requests.get(0);
        Map<String, Object> image = Json.obj(request.get("image"), "image");
        assertEquals(448L, image.get("width"));
        assertEquals(224L, image.get("height"));
        assertArrayEquals(rgb, java.util.Base64.getDecoder().decode((String) image.get("rgb_base64")));
        // The user turn holds vision_start, one image token and vision_end before the question, as Qwen's template.
        int[] p1 = Json.intArray(request.get("prompt_ids"), "p");
        int[] head = nano.encode("<|im_start|>user\n");
        int[] tail = nano.encode("What is this?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
        assertArrayEquals(concat(head, new int[] {152, 150, 153}, tail), p1);
        assertEquals(p1.length + 97 + reply1.length - 1, chat.position());
        chat.send("Its colour?", null);  // a text turn after it: the runner keeps the rotary offset
        assertEquals(null, runner.requests.get(1).get("image"));
        assertEquals(Boolean.TRUE, runner.requests.get(1).get("continue"));
        assertEquals(runner.consumed.size(), chat.position());
        client.quit();
    }

    @Test
    public void runnerErrorKeepsTheSessionAndEofIsAnError() throws Exception {
        FakeRunner runner = new FakeRunner();
        runner.replies.add(new int[] {5, 8168});
        ServeClient client = new ServeClient(runner.toApp, runner.fromApp);
        runner.start();
        client.awaitReady();
        try {
            client.generate(new int[] {999999}, 4, ServeProtocol.Sampling.greedy(), true, false, null);
            fail();
        } catch (ServeClient.RunnerError e) {
            assertEquals("prompt_ids: token 999999 is outside the vocabulary 0..8191", e.getMessage());
        }
        final List<Integer> seen = new ArrayList<Integer>();
        ServeProtocol.Done d = client.generate(new int[] {1, 2}, 4, ServeProtocol.Sampling.greedy(), true, false,
                new ServeClient.TokenListener() {
                    @Override
                    public void onToken(int token, int index, double ms) {
                        seen.add(token);
                    }
                });
        assertArrayEquals(new int[] {5, 8168}, d.tokens);
        assertEquals(2, seen.size());
        try {
            client.info();  // the fake runner does not know "info"
            fail();
        } catch (ServeClient.RunnerError e) {
            assertEquals("op: unknown 'info'", e.getMessage());
        }
        client.quit();
        try {
            client.reset();
            fail();
        } catch (java.io.IOException expected) {
            // the runner is gone: its pipe is closed (the app restarts it)
        }
    }
}
