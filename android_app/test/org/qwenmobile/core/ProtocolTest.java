package org.qwenmobile.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.Map;
import org.junit.Test;

/** Request lines and strict parsing of the runner's lines (/work/notes/serve_protocol.md). */
public class ProtocolTest {
    @Test
    public void generateRequestCarriesEveryField() throws Exception {
        ServeProtocol.Sampling s = new ServeProtocol.Sampling();
        s.temperature = 0.7;
        s.topK = 20;
        s.topP = 0.9;
        s.repetitionPenalty = 1.1;
        s.seed = Long.MAX_VALUE;  // the protocol's largest seed
        String line = ServeProtocol.generate(7L, new int[] {1, 2, 3}, 16, s, true, false);
        assertEquals("{\"op\":\"generate\",\"id\":7,\"prompt_ids\":[1,2,3],\"max_new_tokens\":16,\"temperature\":0.7,"
                + "\"top_k\":20,\"top_p\":0.9,\"repetition_penalty\":1.1,\"seed\":9223372036854775807,"
                + "\"stop_at_stop_ids\":true,\"continue\":false}", line);
        assertEquals("{\"op\":\"cancel\"}", ServeProtocol.cancel());
        assertEquals("{\"op\":\"save\",\"id\":3,\"path\":\"/data/x \\\"q\\\".bin\"}",
                ServeProtocol.save(3L, "/data/x \"q\".bin"));
        assertEquals("{\"op\":\"bench\",\"id\":1,\"prompt_lens\":[128,512],\"gen\":64,\"runs\":5,\"warmup\":1,\"seed\":0}",
                ServeProtocol.bench(1L, new int[] {128, 512}, 64, 5, 1, 0));
    }

    @Test
    public void badSamplingIsRefusedByName() {
        ServeProtocol.Sampling s = new ServeProtocol.Sampling();
        s.topP = 0;
        try {
            ServeProtocol.generate(1L, new int[] {1}, 4, s, true, false);
            fail();
        } catch (IllegalArgumentException e) {
            assertEquals("top_p 0.0: must be in (0, 1]", e.getMessage());
        }
        s.topP = 1;
        s.seed = -1;
        try {
            ServeProtocol.generate(1L, new int[] {1}, 4, s, true, false);
            fail();
        } catch (IllegalArgumentException e) {
            assertEquals("seed -1: must be in 0..2^63-1", e.getMessage());
        }
        try {
            ServeProtocol.generate(1L, new int[0], 4, ServeProtocol.Sampling.greedy(), true, false);
            fail();
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage().startsWith("prompt_ids"));
        }
    }

    @Test
    public void parsesEveryEvent() throws Exception {
        ServeProtocol.Event r = ServeProtocol.parse("{\"event\":\"ready\",\"protocol\":1,\"bundle\":\"/b\",\"model\":\"nano\","
                + "\"recipe\":\"xnnpack-8da4w\",\"vocab_size\":8192,\"max_seq_len\":512,\"max_prefill_tokens\":64,"
                + "\"stop_ids\":[8168,8166],\"threads\":4}");
        assertEquals(ServeProtocol.Type.READY, r.type);
        assertEquals(8192, r.ready().vocabSize);
        assertArrayEquals(new int[] {8168, 8166}, r.ready().stopIds);
        ServeProtocol.Event t = ServeProtocol.parse("{\"event\":\"token\",\"id\":5,\"token\":123,\"index\":0,\"ms\":12.5}");
        assertEquals(123, t.token());
        assertEquals(12.5, t.ms(), 0);
        assertEquals(5L, t.id);
        ServeProtocol.Event d = ServeProtocol.parse("{\"event\":\"done\",\"id\":\"a\",\"tokens\":[1,2],\"stop_reason\":"
                + "\"stop_id\",\"prompt_tokens\":9,\"position\":10,\"ttft_ms\":50,\"prefill_tok_s\":180.5,"
                + "\"decode_tok_s\":null}");
        assertEquals("stop_id", d.done().stopReason);
        assertEquals(10, d.done().position);
        assertNull(d.done().decodeTokS);
        assertEquals(50.0, d.done().ttftMs, 0);
        assertEquals("a", d.id);
        assertEquals("prompt_ids: token 999999 is outside the vocabulary 0..8191",
                ServeProtocol.parse("{\"event\":\"error\",\"id\":1,\"message\":\"prompt_ids: token 999999 is outside the"
                        + " vocabulary 0..8191\"}").message());
        assertEquals(ServeProtocol.Type.BYE, ServeProtocol.parse("{\"event\":\"bye\",\"id\":2}").type);
        assertEquals(ServeProtocol.Type.OK, ServeProtocol.parse("{\"event\":\"ok\",\"id\":2,\"op\":\"reset\",\"position\":0}").type);
    }

    private static void malformed(String line, String why) {
        try {
            ServeProtocol.parse(line);
            fail("accepted: " + line);
        } catch (ServeProtocol.ProtocolException e) {
            assertTrue(e.getMessage() + " should start with " + why, e.getMessage().startsWith(why));
            assertTrue("quotes the line", e.getMessage().endsWith(line.length() > 200 ? "..." : line));
        }
    }

    @Test
    public void malformedLinesAreNamed() {
        malformed("", "not a JSON object");
        malformed("loading bundle...", "not a JSON object");
        malformed("[1,2]", "not a JSON object");
        malformed("{\"event\":\"token\",\"token\":1,\"index\":0", "not a JSON object");
        malformed("{\"token\":1}", "no \"event\" string");
        malformed("{\"event\":\"tokens\"}", "unknown event 'tokens'");
        malformed("{\"event\":\"token\",\"index\":0,\"ms\":1}", "missing \"token\"");
        malformed("{\"event\":\"token\",\"token\":1.5,\"index\":0,\"ms\":1}", "\"token\" must be an integer");
        malformed("{\"event\":\"token\",\"token\":-1,\"index\":0,\"ms\":1}", "negative token or index");
        malformed("{\"event\":\"token\",\"token\":1,\"index\":0,\"ms\":\"fast\"}", "\"ms\" must be a number");
        malformed("{\"event\":\"done\",\"tokens\":[1,\"x\"],\"stop_reason\":\"stop_id\"}",
                "\"tokens\" must be an array of integers");
        malformed("{\"event\":\"done\",\"tokens\":[],\"stop_reason\":\"tired\",\"prompt_tokens\":1,\"position\":1,"
                + "\"ttft_ms\":1,\"prefill_tok_s\":1}", "unknown stop_reason 'tired'");
        malformed("{\"event\":\"ready\",\"protocol\":2}", "protocol 2, this app speaks 1");
        malformed("{\"event\":\"error\"}", "missing \"message\"");
        malformed("{\"event\":\"bye\",\"id\":{\"a\":1}}", "\"id\" must be a scalar");
        malformed("{\"event\":\"bench\",\"result\":[]}", "\"result\" must be an object");
        StringBuilder longLine = new StringBuilder("{\"event\":\"nope\",\"pad\":\"");
        for (int i = 0; i < 300; i++) longLine.append('x');
        malformed(longLine.append("\"}").toString(), "unknown event 'nope'");
    }

    @Test
    public void jsonRoundTripKeepsUnicodeAndNumbers() throws Exception {
        String s = "{\"a\":\"\\ud83d\\udc4d \\u00e9\\n\",\"b\":[1,-2.5,1e3,12345678901234],\"c\":null,\"d\":true}";
        Map<String, Object> m = Json.parseObject(s);
        assertEquals("\ud83d\udc4d \u00e9\n", m.get("a"));
        assertEquals(1000.0, (Double) Json.arr(m.get("b"), "b").get(2), 0);
        assertEquals(12345678901234L, Json.arr(m.get("b"), "b").get(3));
        assertEquals(m, Json.parseObject(Json.write(m)));
        assertEquals(m, Json.parseObject(Json.writePretty(m)));
    }
}
