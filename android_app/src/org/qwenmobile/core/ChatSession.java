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
        boolean fresh = position == 0 && pending.length == 0;
        String text = (fresh && systemPrompt != null ? template.system(systemPrompt) : "") + close
                + template.user(userText);
        return tokenizer.encode(text);
    }

    public Reply send(String userText, final Listener listener)
            throws IOException, ServeProtocol.ProtocolException, ServeClient.RunnerError {
        int[] prompt = nextPromptIds(userText);
        final BpeTokenizer.StreamDecoder decoder = tokenizer.new StreamDecoder(true);
        final StringBuilder text = new StringBuilder();
        int start = position;
        int pendingBefore = pending.length;
        ServeProtocol.Done done = client.generate(prompt, maxNewTokens, sampling, true, start > 0 || pendingBefore > 0,
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
        // Consumed: the pending token, the prompt, and every generated token but the last (now pending).
        int expected = start + pendingBefore + prompt.length + Math.max(0, generated - 1);
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
