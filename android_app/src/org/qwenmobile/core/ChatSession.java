package org.qwenmobile.core;

import java.io.IOException;

/**
 * A multi-turn chat over one runner session, as runtime/commands.py's chat does it: each turn prefills only its new
 * text ({@code continue: true}) and the previous reply is closed with {@link ChatTemplate#closeAssistant}. The last
 * sampled token of a reply (typically {@code <|im_end|>}) stays pending in the runner, which feeds it before the next
 * prompt (runtime/runner/SERVE.md, as runtime/session.py does); this class only keeps count of it.
 */
public final class ChatSession {
    public interface Listener {
        /** Text that became complete (UTF-8 characters split over tokens are held back until whole). */
        void onText(String text);
    }

    public static final class Reply {
        public final String text;
        public final ServeProtocol.Done done;

        Reply(String text, ServeProtocol.Done done) {
            this.text = text;
            this.done = done;
        }
    }

    private final ServeClient client;
    private final BpeTokenizer tokenizer;
    private final int[] stopIds;
    private final int imEnd;
    public ChatTemplate template;
    public String systemPrompt;
    public ServeProtocol.Sampling sampling = ServeProtocol.Sampling.greedy();
    public int maxNewTokens = 256;
    /** The bundle's {@code vision} section ({@link Bundle#vision()}); null: the bundle takes no images. */
    public Bundle.Vision vision;

    private int position;           // tokens the runner's state holds
    private int[] pending = new int[0];  // sampled, not yet fed: the runner feeds it before the next prompt
    private String close = "";      // text that closes the previous assistant turn

    public ChatSession(ServeClient client, BpeTokenizer tokenizer, int[] stopIds, boolean thinking) {
        this.client = client;
        this.tokenizer = tokenizer;
        this.stopIds = stopIds;
        this.imEnd = tokenizer.tokenToId(ChatTemplate.IM_END);
        this.template = new ChatTemplate(thinking);
    }

    public int position() {
        return position;
    }

    private boolean isStop(int id) {
        for (int s : stopIds) if (s == id) return true;
        return false;
    }

    /** The ids the next turn sends for userText (the runner prepends its pending token itself). */
    public int[] nextPromptIds(String userText) {
        return nextPromptIds(userText, false);
    }

    /**
     * With an image, the user turn starts with vision_start, ONE image token and vision_end (Qwen's chat template puts
     * the image before the question); the runner expands the image token. The ids come from the manifest, and the
     * text is encoded in two pieces split at special tokens, which encode the same apart as together.
     */
    public int[] nextPromptIds(String userText, boolean withImage) {
        boolean fresh = position == 0 && pending.length == 0;
        String head = (fresh && systemPrompt != null ? template.system(systemPrompt) : "") + close;
        if (!withImage) return tokenizer.encode(head + template.user(userText));
        if (vision == null) throw new IllegalArgumentException("image: this bundle has no vision section; it takes no images");
        int[] before = tokenizer.encode(head + ChatTemplate.IM_START + "user\n");
        int[] after = tokenizer.encode(userText + ChatTemplate.IM_END + "\n" + template.generationPrompt());
        int[] ids = new int[before.length + 3 + after.length];
        System.arraycopy(before, 0, ids, 0, before.length);
        ids[before.length] = vision.visionStartTokenId;
        ids[before.length + 1] = vision.imageTokenId;
        ids[before.length + 2] = vision.visionEndTokenId;
        System.arraycopy(after, 0, ids, before.length + 3, after.length);
        return ids;
    }

    public Reply send(String userText, final Listener listener)
            throws IOException, ServeProtocol.ProtocolException, ServeClient.RunnerError {
        return send(userText, null, listener);
    }

    /** A turn with an image already at one of the bundle's sizes ({@code app/BitmapImages}); null: text only. */
    public Reply send(String userText, ImageInput image, final Listener listener)
            throws IOException, ServeProtocol.ProtocolException, ServeClient.RunnerError {
        ImageInput.Size size = image == null ? null : sizeOf(image);
        int[] prompt = nextPromptIds(userText, image != null);
        final BpeTokenizer.StreamDecoder decoder = tokenizer.new StreamDecoder(true);
        final StringBuilder text = new StringBuilder();
        int start = position;
        int pendingBefore = pending.length;
        ServeProtocol.Done done = client.generate(prompt, image, maxNewTokens, sampling, true,
                start > 0 || pendingBefore > 0,
                new ServeClient.TokenListener() {
                    @Override
                    public void onToken(int token, int index, double ms) {
                        if (isStop(token)) return;  // the reply's text, without the stop token
                        String piece = decoder.push(token);
                        text.append(piece);
                        if (listener != null && !piece.isEmpty()) listener.onText(piece);
                    }
                });
        String tail = decoder.flush();
        text.append(tail);
        if (listener != null && !tail.isEmpty()) listener.onText(tail);
        int generated = done.tokens.length;
        if (size != null && done.imageTokens != size.tokens) {
            throw new IOException("the runner put " + done.imageTokens + " tokens for a " + size + " image in the prompt; "
                    + "the manifest says " + size.tokens);
        }
        // Consumed: the pending token, the prompt (its image token expanded), and every generated token but the last
        // (now pending).
        int expected = start + pendingBefore + prompt.length + (size != null ? size.tokens - 1 : 0)
                + Math.max(0, generated - 1);
        if (done.position != expected) {
            throw new IOException("runner position " + done.position + " after a turn that started at " + start
                    + " with " + pendingBefore + " pending, " + prompt.length + " prompt and " + generated
                    + " generated tokens; expected " + expected + " (runtime/runner/SERVE.md bookkeeping)");
        }
        pending = generated > 0 ? new int[] {done.tokens[generated - 1]} : pending;
        position = done.position;
        boolean endedWithImEnd = generated > 0 && done.tokens[generated - 1] == imEnd;
        close = ChatTemplate.closeAssistant(endedWithImEnd);
        return new Reply(text.toString(), done);
    }

    private ImageInput.Size sizeOf(ImageInput image) {
        if (vision == null) throw new IllegalArgumentException("image: this bundle has no vision section; it takes no images");
        for (ImageInput.Size s : vision.sizes) if (s.height == image.height && s.width == image.width) return s;
        throw new IllegalArgumentException("image: " + image.height + "x" + image.width + " (HxW) pixels; this bundle "
                + "encodes " + vision.sizes + " (HxW) only: scale it to vision.sizeFor(height, width) first");
    }

    public void reset() throws IOException, ServeProtocol.ProtocolException, ServeClient.RunnerError {
        position = client.reset();
        pending = new int[0];
        close = "";
    }

    /** Saves the runner state and this session's bookkeeping beside it (path + ".chat.json"). */
    public void save(String absPath) throws IOException, ServeProtocol.ProtocolException, ServeClient.RunnerError {
        client.save(absPath);
        java.util.LinkedHashMap<String, Object> m = new java.util.LinkedHashMap<String, Object>();
        m.put("position", (long) position);
        m.put("pending", Json.list(pending));
        m.put("close", close);
        m.put("thinking", template.thinking);
        Files.writeUtf8Atomically(new java.io.File(absPath + ".chat.json"), Json.writePretty(m));
    }

    public void load(String absPath) throws IOException, ServeProtocol.ProtocolException, ServeClient.RunnerError {
        java.util.Map<String, Object> m;
        try {
            m = Json.parseObject(Files.readUtf8(new java.io.File(absPath + ".chat.json")));
        } catch (Json.ParseException e) {
            throw new IOException(absPath + ".chat.json: " + e.getMessage());
        }
        int restored = client.load(absPath);
        if (restored != Json.integer(m.get("position"), "position")) {
            throw new IOException(absPath + ": the runner restored position " + restored + ", the chat file says "
                    + m.get("position"));
        }
        position = restored;
        pending = Json.intArray(m.get("pending"), "pending");
        close = Json.str(m.get("close"), "close");
        template = new ChatTemplate(Boolean.TRUE.equals(m.get("thinking")));
    }
}
