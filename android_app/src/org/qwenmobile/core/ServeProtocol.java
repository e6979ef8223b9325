package org.qwenmobile.core;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The JSON-lines protocol of {@code qwen-bench --serve} (/work/notes/serve_protocol.md, runtime/README.md): request
 * lines the app writes and typed events parsed from the runner's lines. Parsing is strict: a line that is not the
 * protocol (not JSON, unknown event, a field missing or of the wrong type) raises {@link ProtocolException} quoting the
 * line, never a half-filled event.
 */
public final class ServeProtocol {
    private ServeProtocol() {}

    public static final int VERSION = 1;

    public static final class ProtocolException extends Exception {
        public ProtocolException(String message, String line) {
            super(message + ": " + (line.length() > 200 ? line.substring(0, 200) + "..." : line));
        }
    }

    /** Sampling settings of a generate request (the portable rule: temperature 0 is greedy). */
    public static final class Sampling {
        public double temperature;
        public int topK;
        public double topP = 1.0;
        public double repetitionPenalty = 1.0;
        public long seed;  // 0 .. 2^63 - 1 (runtime/runner/SERVE.md)

        public static Sampling greedy() {
            return new Sampling();
        }

        public void check() {
            if (!(temperature >= 0)) throw new IllegalArgumentException("temperature " + temperature + ": must be >= 0");
            if (topK < 0) throw new IllegalArgumentException("top_k " + topK + ": must be >= 0");
            if (!(topP > 0 && topP <= 1)) throw new IllegalArgumentException("top_p " + topP + ": must be in (0, 1]");
            if (seed < 0) throw new IllegalArgumentException("seed " + seed + ": must be in 0..2^63-1");
            if (!(repetitionPenalty > 0)) {
                throw new IllegalArgumentException("repetition_penalty " + repetitionPenalty + ": must be > 0");
            }
        }
    }

    // ---- requests ---------------------------------------------------------------------------------------------

    private static LinkedHashMap<String, Object> op(String op, Object id) {
        LinkedHashMap<String, Object> m = new LinkedHashMap<String, Object>();
        m.put("op", op);
        if (id != null) m.put("id", id);
        return m;
    }

    public static String generate(Object id, int[] promptIds, int maxNewTokens, Sampling s, boolean stopAtStopIds,
                                  boolean continueSession) {
        return generate(id, promptIds, maxNewTokens, s, stopAtStopIds, continueSession, null);
    }

    /**
     * A generate with an image (null: none): the prompt marks its place with one image token, inside vision_start and
     * vision_end, which the runner expands to the image's tokens (runtime/runner/SERVE.md).
     */
    public static String generate(Object id, int[] promptIds, int maxNewTokens, Sampling s, boolean stopAtStopIds,
                                  boolean continueSession, ImageInput image) {
        if (promptIds.length == 0 && !continueSession) {
            throw new IllegalArgumentException("prompt_ids: empty prompt on a fresh session");
        }
        if (maxNewTokens < 0) throw new IllegalArgumentException("max_new_tokens " + maxNewTokens + ": must be >= 0");
        s.check();
        LinkedHashMap<String, Object> m = op("generate", id);
        m.put("prompt_ids", Json.list(promptIds));
        m.put("max_new_tokens", (long) maxNewTokens);
        m.put("temperature", s.temperature);
        m.put("top_k", (long) s.topK);
        m.put("top_p", s.topP);
        m.put("repetition_penalty", s.repetitionPenalty);
        m.put("seed", s.seed);
        m.put("stop_at_stop_ids", stopAtStopIds);
        m.put("continue", continueSession);
        if (image != null) m.put("image", image.requestField());
        return write(m);
    }

    public static String bench(Object id, int[] promptLens, int gen, int runs, int warmup, long seed) {
        LinkedHashMap<String, Object> m = op("bench", id);
        m.put("prompt_lens", Json.list(promptLens));
        m.put("gen", (long) gen);
        m.put("runs", (long) runs);
        m.put("warmup", (long) warmup);
        if (seed < 0) throw new IllegalArgumentException("seed " + seed + ": must be in 0..2^63-1");
        m.put("seed", seed);
        return write(m);
    }

    public static String cancel() {
        return write(op("cancel", null));
    }

    public static String reset(Object id) {
        return write(op("reset", id));
    }

    public static String save(Object id, String absPath) {
        LinkedHashMap<String, Object> m = op("save", id);
        m.put("path", absPath);
        return write(m);
    }

    public static String load(Object id, String absPath) {
        LinkedHashMap<String, Object> m = op("load", id);
        m.put("path", absPath);
        return write(m);
    }

    public static String info(Object id) {
        return write(op("info", id));
    }

    public static String quit(Object id) {
        return write(op("quit", id));
    }

    private static String write(Map<String, Object> m) {
        return Json.write(m);
    }

    // ---- events -------------------------------------------------------------------------------------------------

    public enum Type { READY, TOKEN, DONE, BENCH, OK, INFO, ERROR, BYE }

    public static final class Event {
        public final Type type;
        public final Object id;  // echoed request id, or null
        public final Map<String, Object> fields;

        Event(Type type, Object id, Map<String, Object> fields) {
            this.type = type;
            this.id = id;
            this.fields = fields;
        }

        public int token() {
            return (int) (long) (Long) fields.get("token");
        }

        public int index() {
            return (int) (long) (Long) fields.get("index");
        }

        public double ms() {
            return ((Number) fields.get("ms")).doubleValue();
        }

        public String message() {
            return (String) fields.get("message");
        }

        public Done done() {
            return new Done(fields);
        }

        public Ready ready() {
            return new Ready(fields);
        }
    }

    public static final class Ready {
        public final String bundle;
        public final String model;
        public final int vocabSize;
        public final int maxSeqLen;
        public final int maxPrefillTokens;
        public final int[] stopIds;
        public final int threads;

        Ready(Map<String, Object> f) {
            bundle = (String) f.get("bundle");
            model = (String) f.get("model");
            vocabSize = (int) (long) (Long) f.get("vocab_size");
            maxSeqLen = (int) (long) (Long) f.get("max_seq_len");
            maxPrefillTokens = (int) (long) (Long) f.get("max_prefill_tokens");
            stopIds = Json.intArray(f.get("stop_ids"), "stop_ids");
            threads = (int) (long) (Long) f.get("threads");
        }
    }

    public static final class Done {
        public final int[] tokens;
        public final String stopReason;
        public final int promptTokens;
        public final int position;
        public final double ttftMs;
        public final double prefillTokS;
        public final Double decodeTokS;  // null when no decode step ran (one token)
        public final Double imageEncodeMs;  // with an image only; ttftMs includes it
        public final int imageTokens;       // the image's tokens the runner put in the prompt; 0 without one
        public final Integer ropePosition;  // bundles with a vision section: the next rotary position

        Done(Map<String, Object> f) {
            tokens = Json.intArray(f.get("tokens"), "tokens");
            stopReason = (String) f.get("stop_reason");
            promptTokens = (int) (long) (Long) f.get("prompt_tokens");
            position = (int) (long) (Long) f.get("position");
            ttftMs = ((Number) f.get("ttft_ms")).doubleValue();
            prefillTokS = ((Number) f.get("prefill_tok_s")).doubleValue();
            Object d = f.get("decode_tok_s");
            decodeTokS = d == null ? null : ((Number) d).doubleValue();
            Object e = f.get("image_encode_ms");
            imageEncodeMs = e == null ? null : ((Number) e).doubleValue();
            Object n = f.get("image_tokens");
            imageTokens = n == null ? 0 : (int) (long) (Long) n;
            Object r = f.get("rope_position");
            ropePosition = r == null ? null : (int) (long) (Long) r;
        }
    }

    static final String[] STOP_REASONS = {"stop_id", "max_new_tokens", "context_full", "cancelled"};

    /** One runner line -> a typed event, or ProtocolException naming what is wrong. */
    public static Event parse(String line) throws ProtocolException {
        Map<String, Object> m;
        try {
            m = Json.parseObject(line);
        } catch (Json.ParseException e) {
            throw new ProtocolException("not a JSON object (" + e.getMessage() + ")", line);
        }
        Object ev = m.get("event");
        if (!(ev instanceof String)) throw new ProtocolException("no \"event\" string", line);
        Type type;
        try {
            type = Type.valueOf(((String) ev).toUpperCase(java.util.Locale.ROOT));
        } catch (IllegalArgumentException unknown) {
            throw new ProtocolException("unknown event '" + ev + "'", line);
        }
        Object id = m.get("id");
        if (id instanceof Map || id instanceof List) throw new ProtocolException("\"id\" must be a scalar", line);
        switch (type) {
            case READY:
                need(m, line, "protocol", Long.class);
                if ((Long) m.get("protocol") != VERSION) {
                    throw new ProtocolException("protocol " + m.get("protocol") + ", this app speaks " + VERSION, line);
                }
                need(m, line, "bundle", String.class);
                need(m, line, "model", String.class);
                need(m, line, "vocab_size", Long.class);
                need(m, line, "max_seq_len", Long.class);
                need(m, line, "max_prefill_tokens", Long.class);
                needIntList(m, line, "stop_ids");
                need(m, line, "threads", Long.class);
                break;
            case TOKEN:
                need(m, line, "token", Long.class);
                need(m, line, "index", Long.class);
                need(m, line, "ms", Number.class);
                if ((Long) m.get("token") < 0 || (Long) m.get("index") < 0) {
                    throw new ProtocolException("negative token or index", line);
                }
                break;
            case DONE:
                needIntList(m, line, "tokens");
                need(m, line, "stop_reason", String.class);
                boolean known = false;
                for (String r : STOP_REASONS) known |= r.equals(m.get("stop_reason"));
                if (!known) throw new ProtocolException("unknown stop_reason '" + m.get("stop_reason") + "'", line);
                need(m, line, "prompt_tokens", Long.class);
                need(m, line, "position", Long.class);
                need(m, line, "ttft_ms", Number.class);
                need(m, line, "prefill_tok_s", Number.class);
                if (m.get("decode_tok_s") != null) need(m, line, "decode_tok_s", Number.class);
                if (m.get("image_encode_ms") != null || m.get("image_tokens") != null) {
                    need(m, line, "image_encode_ms", Number.class);
                    need(m, line, "image_tokens", Long.class);
                }
                if (m.get("rope_position") != null) need(m, line, "rope_position", Long.class);
                break;
            case BENCH:
                if (!(m.get("result") instanceof Map)) throw new ProtocolException("\"result\" must be an object", line);
                break;
            case OK:
                need(m, line, "op", String.class);
                break;
            case ERROR:
                need(m, line, "message", String.class);
                break;
            case INFO:
                need(m, line, "position", Long.class);
                break;
            case BYE:
                break;
        }
        return new Event(type, id, m);
    }

    private static void need(Map<String, Object> m, String line, String key, Class<?> cls) throws ProtocolException {
        Object v = m.get(key);
        if (v == null) throw new ProtocolException("missing \"" + key + "\"", line);
        if (!cls.isInstance(v)) {
            throw new ProtocolException("\"" + key + "\" must be " + (cls == Long.class ? "an integer"
                    : cls == Number.class ? "a number" : "a string"), line);
        }
    }

    private static void needIntList(Map<String, Object> m, String line, String key) throws ProtocolException {
        Object v = m.get(key);
        if (!(v instanceof List)) throw new ProtocolException("\"" + key + "\" must be an array of integers", line);
        for (Object x : (List<?>) v) {
            if (!(x instanceof Long)) throw new ProtocolException("\"" + key + "\" must be an array of integers", line);
        }
    }

    static List<Object> ids(int[] a) {
        List<Object> l = new ArrayList<Object>();
        for (int x : a) l.add((long) x);
        return l;
    }
}
