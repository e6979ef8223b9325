package org.qwenmobile.core;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.nio.charset.Charset;
import java.text.Normalizer;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Qwen's byte-level BPE, read from a Hugging Face {@code tokenizer.json}: the same ids as the {@code tokenizers}
 * library for the configurations Qwen ships (checked on shared vectors in tests/apps/vectors).
 *
 * <p>Encode: added tokens are cut out of the raw text first (leftmost, longest match); each remaining segment is NFC
 * normalised (when the file says so), split by the pre-tokenizer pattern (isolated matches and gaps), mapped byte by
 * byte onto GPT-2's printable alphabet and merged by rank. Decode: tokens' characters back to bytes (a token with a
 * character outside the alphabet, an added token say, contributes its own UTF-8 bytes), then one lossy UTF-8 decode.
 *
 * <p>Anything else a tokenizer.json can say (other models, normalizers, pre-tokenizers, added-token options) is
 * refused with an error naming the field, never approximated.
 */
public final class BpeTokenizer {
    /** GPT-2's pattern, used by a top-level ByteLevel pre-tokenizer with use_regex true. */
    static final String GPT2_PATTERN =
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
    private static final Charset UTF8 = Charset.forName("UTF-8");

    private final Map<String, Integer> vocab;
    private final String[] idToToken;
    private final HashMap<Long, int[]> merges;  // (left id << 32 | right id) -> {rank, merged id}
    private final boolean ignoreMerges;
    private final boolean nfc;
    private final Pattern split;
    private final List<AddedToken> added;  // sorted longest first, so the first match at a position is the longest
    private final Map<String, Integer> addedByContent = new HashMap<String, Integer>();
    private final Map<Integer, AddedToken> addedById = new HashMap<Integer, AddedToken>();
    private final int vocabSize;
    private final int[] byteToId = new int[256];  // -1 when the vocabulary lacks that byte's character
    private final LinkedHashMap<String, int[]> cache;

    private static final char[] BYTE_TO_CHAR = new char[256];
    private static final Map<Character, Integer> CHAR_TO_BYTE = new HashMap<Character, Integer>();

    static {
        // GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for 256 + n in order.
        int n = 0;
        for (int b = 0; b < 256; b++) {
            boolean printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
            BYTE_TO_CHAR[b] = (char) (printable ? b : 256 + n++);
            CHAR_TO_BYTE.put(BYTE_TO_CHAR[b], b);
        }
    }

    public static final class AddedToken {
        public final int id;
        public final String content;
        public final boolean special;

        AddedToken(int id, String content, boolean special) {
            this.id = id;
            this.content = content;
            this.special = special;
        }
    }

    public static BpeTokenizer fromFile(File file) throws IOException {
        try {
            return new BpeTokenizer(Json.parseObject(Files.readUtf8(file)), file.getPath());
        } catch (Json.ParseException e) {
            throw new IOException(file + ": not valid JSON (" + e.getMessage() + ")");
        }
    }

    public BpeTokenizer(Map<String, Object> json, String source) {
        Map<String, Object> model = Json.obj(json.get("model"), source + ": model");
        if (!"BPE".equals(model.get("type"))) {
            throw new IllegalArgumentException(source + ": model.type " + model.get("type") + ": only BPE is read");
        }
        for (String unsupported : new String[] {"continuing_subword_prefix", "end_of_word_suffix", "dropout"}) {
            Object v = model.get(unsupported);
            if (v != null && !"".equals(v)) {
                throw new IllegalArgumentException(source + ": model." + unsupported + " is set; Qwen's byte-level"
                        + " BPE has none and this reader does not implement it");
            }
        }
        if (Boolean.TRUE.equals(model.get("byte_fallback"))) {
            throw new IllegalArgumentException(source + ": model.byte_fallback true is not supported");
        }
        ignoreMerges = Boolean.TRUE.equals(model.get("ignore_merges"));

        Map<String, Object> v = Json.obj(model.get("vocab"), source + ": model.vocab");
        vocab = new HashMap<String, Integer>(v.size() * 2);
        int maxId = -1;
        for (Map.Entry<String, Object> e : v.entrySet()) {
            int id = (int) Json.integer(e.getValue(), source + ": model.vocab[" + e.getKey() + "]");
            vocab.put(e.getKey(), id);
            maxId = Math.max(maxId, id);
        }
        List<AddedToken> addedList = new ArrayList<AddedToken>();
        Object at = json.get("added_tokens");
        if (at != null) {
            List<Object> items = Json.arr(at, source + ": added_tokens");
            for (int i = 0; i < items.size(); i++) {
                String f = source + ": added_tokens[" + i + "]";
                Map<String, Object> t = Json.obj(items.get(i), f);
                for (String opt : new String[] {"lstrip", "rstrip", "single_word", "normalized"}) {
                    if (Boolean.TRUE.equals(t.get(opt))) {
                        throw new IllegalArgumentException(f + "." + opt + " is true; Qwen's added tokens have it false"
                                + " and this reader does not implement it");
                    }
                }
                AddedToken tok = new AddedToken((int) Json.integer(t.get("id"), f + ".id"),
                        Json.str(t.get("content"), f + ".content"), Boolean.TRUE.equals(t.get("special")));
                if (tok.content.isEmpty()) throw new IllegalArgumentException(f + ".content is empty");
                addedList.add(tok);
                addedByContent.put(tok.content, tok.id);
                addedById.put(tok.id, tok);
                maxId = Math.max(maxId, tok.id);
            }
        }
        Collections.sort(addedList, new Comparator<AddedToken>() {
            @Override
            public int compare(AddedToken a, AddedToken b) {
                return b.content.length() - a.content.length();
            }
        });
        added = addedList;
        vocabSize = maxId + 1;
        idToToken = new String[vocabSize];
        for (Map.Entry<String, Integer> e : vocab.entrySet()) idToToken[e.getValue()] = e.getKey();
        for (AddedToken t : addedList) idToToken[t.id] = t.content;

        List<Object> m = Json.arr(model.get("merges"), source + ": model.merges");
        merges = new HashMap<Long, int[]>(m.size() * 2);
        for (int rank = 0; rank < m.size(); rank++) {
            String f = source + ": model.merges[" + rank + "]";
            String a;
            String b;
            Object item = m.get(rank);
            if (item instanceof String) {  // older files: "a b"
                String s = (String) item;
                int sp = s.indexOf(' ');
                if (sp <= 0 || sp != s.lastIndexOf(' ')) throw new IllegalArgumentException(f + ": expected 'a b'");
                a = s.substring(0, sp);
                b = s.substring(sp + 1);
            } else {
                List<Object> pair = Json.arr(item, f);
                if (pair.size() != 2) throw new IllegalArgumentException(f + ": expected a pair");
                a = Json.str(pair.get(0), f);
                b = Json.str(pair.get(1), f);
            }
            Integer ia = vocab.get(a);
            Integer ib = vocab.get(b);
            Integer merged = vocab.get(a + b);
            if (ia == null || ib == null || merged == null) {
                throw new IllegalArgumentException(f + ": '" + a + "' + '" + b + "' is not in the vocabulary");
            }
            Long key = ((long) ia << 32) | (ib & 0xffffffffL);
            if (!merges.containsKey(key)) merges.put(key, new int[] {rank, merged});
        }
        for (int byt = 0; byt < 256; byt++) {
            Integer id = vocab.get(String.valueOf(BYTE_TO_CHAR[byt]));
            byteToId[byt] = id == null ? -1 : id;
        }

        nfc = readNormalizer(json.get("normalizer"), source);
        split = readPreTokenizer(json.get("pre_tokenizer"), source);
        cache = new LinkedHashMap<String, int[]>(1024, 0.75f, true) {
            @Override
            protected boolean removeEldestEntry(Map.Entry<String, int[]> eldest) {
                return size() > 20000;
            }
        };
    }

    private static boolean readNormalizer(Object n, String source) {
        if (n == null) return false;
        Map<String, Object> m = Json.obj(n, source + ": normalizer");
        Object type = m.get("type");
        if ("NFC".equals(type)) return true;
        if ("Sequence".equals(type)) {
            List<Object> items = Json.arr(m.get("normalizers"), source + ": normalizer.normalizers");
            boolean any = false;
            for (Object item : items) any |= readNormalizer(item, source);
            return any;
        }
        throw new IllegalArgumentException(source + ": normalizer.type " + type + ": only NFC is supported");
    }

    /** Unicode's White_Space property, which Oniguruma's \\s matches in tokenizers. */
    static final String WHITE_SPACE = "\\t\\n\\x0B\\f\\r\\x20\\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";

    /**
     * tokenizers' regexes (Oniguruma) read \\s and (?i) as Unicode. The desktop JDK's \\s is ASCII unless
     * UNICODE_CHARACTER_CLASS is set, a flag Android's ICU-backed regex does not have; so \\s is spelled out as the
     * White_Space set and case folding asked for with UNICODE_CASE, which both platforms read the same way.
     */
    static Pattern compile(String regex) {
        StringBuilder out = new StringBuilder(regex.length() + 64);
        boolean inClass = false;
        for (int i = 0; i < regex.length(); i++) {
            char c = regex.charAt(i);
            if (c == '\\' && i + 1 < regex.length()) {
                char n = regex.charAt(++i);
                if (n == 's') {
                    out.append(inClass ? WHITE_SPACE : "[" + WHITE_SPACE + "]");
                } else if (n == 'S') {
                    if (inClass) throw new IllegalArgumentException("pre-tokenizer regex: \\S inside [...] is not supported");
                    out.append("[^").append(WHITE_SPACE).append(']');
                } else if ("wWdDbB".indexOf(n) >= 0) {
                    throw new IllegalArgumentException("pre-tokenizer regex: \\" + n + " differs between Oniguruma and"
                            + " Java and is not supported");
                } else {
                    out.append(c).append(n);
                }
                continue;
            }
            if (c == '[' && !inClass) inClass = true;
            else if (c == ']' && inClass) inClass = false;
            out.append(c);
        }
        return Pattern.compile(out.toString(), Pattern.UNICODE_CASE);
    }

    private static Pattern readPreTokenizer(Object p, String source) {
        String f = source + ": pre_tokenizer";
        Map<String, Object> m = Json.obj(p, f);
        Object type = m.get("type");
        if ("ByteLevel".equals(type)) {
            checkByteLevel(m, f, true);
            return compile(GPT2_PATTERN);
        }
        if (!"Sequence".equals(type)) {
            throw new IllegalArgumentException(f + ".type " + type + ": expected Sequence [Split, ByteLevel] or ByteLevel");
        }
        List<Object> items = Json.arr(m.get("pretokenizers"), f + ".pretokenizers");
        if (items.size() != 2) {
            throw new IllegalArgumentException(f + ".pretokenizers: expected [Split, ByteLevel], got " + items.size()
                    + " entries");
        }
        Map<String, Object> s = Json.obj(items.get(0), f + ".pretokenizers[0]");
        if (!"Split".equals(s.get("type"))) {
            throw new IllegalArgumentException(f + ".pretokenizers[0].type " + s.get("type") + ": expected Split");
        }
        if (!"Isolated".equals(s.get("behavior")) || Boolean.TRUE.equals(s.get("invert"))) {
            throw new IllegalArgumentException(f + ".pretokenizers[0]: only behavior Isolated, invert false is supported");
        }
        Map<String, Object> pat = Json.obj(s.get("pattern"), f + ".pretokenizers[0].pattern");
        String regex = Json.str(pat.get("Regex"), f + ".pretokenizers[0].pattern.Regex");
        checkByteLevel(Json.obj(items.get(1), f + ".pretokenizers[1]"), f + ".pretokenizers[1]", false);
        return compile(regex);
    }

    private static void checkByteLevel(Map<String, Object> m, String f, boolean useRegex) {
        if (!"ByteLevel".equals(m.get("type"))) throw new IllegalArgumentException(f + ".type: expected ByteLevel");
        if (Boolean.TRUE.equals(m.get("add_prefix_space"))) {
            throw new IllegalArgumentException(f + ".add_prefix_space true is not supported");
        }
        boolean fileUseRegex = !Boolean.FALSE.equals(m.get("use_regex"));
        if (fileUseRegex != useRegex) {
            throw new IllegalArgumentException(f + ".use_regex " + fileUseRegex + ": expected " + useRegex
                    + " in this position");
        }
    }

    public int vocabSize() {
        return vocabSize;
    }

    /** The id of a vocabulary or added token, or -1. */
    public int tokenToId(String token) {
        Integer id = addedByContent.get(token);
        if (id == null) id = vocab.get(token);
        return id == null ? -1 : id;
    }

    public String idToToken(int id) {
        return id >= 0 && id < idToToken.length ? idToToken[id] : null;
    }

    public boolean isSpecial(int id) {
        AddedToken t = addedById.get(id);
        return t != null && t.special;
    }

    // ---- encode -----------------------------------------------------------------------------------------------

    /** Token ids of text, as tokenizers' {@code encode(text, add_special_tokens=False).ids}. */
    public int[] encode(String text) {
        IntList out = new IntList();
        int start = 0;
        int pos = 0;
        while (pos < text.length()) {
            AddedToken hit = null;
            for (AddedToken t : added) {
                if (text.startsWith(t.content, pos)) {
                    hit = t;  // longest first
                    break;
                }
            }
            if (hit == null) {
                pos++;
                continue;
            }
            encodeSegment(text.substring(start, pos), out);
            out.add(hit.id);
            pos += hit.content.length();
            start = pos;
        }
        encodeSegment(text.substring(start), out);
        return out.toArray();
    }

    private void encodeSegment(String segment, IntList out) {
        if (segment.isEmpty()) return;
        String s = nfc ? Normalizer.normalize(segment, Normalizer.Form.NFC) : segment;
        Matcher m = split.matcher(s);
        int last = 0;
        while (m.find()) {
            if (m.end() == m.start()) continue;  // an empty match splits nothing
            if (m.start() > last) encodeWord(s.substring(last, m.start()), out);
            encodeWord(m.group(), out);
            last = m.end();
        }
        if (last < s.length()) encodeWord(s.substring(last), out);
    }

    /** The pre-tokenizer's pieces of text without added tokens, in byte-level characters (tokenizers' pre_tokenize_str). */
    public List<String> preTokenize(String segment) {
        final List<String> pieces = new ArrayList<String>();
        String s = nfc ? Normalizer.normalize(segment, Normalizer.Form.NFC) : segment;
        Matcher m = split.matcher(s);
        int last = 0;
        while (m.find()) {
            if (m.end() == m.start()) continue;
            if (m.start() > last) pieces.add(byteLevel(s.substring(last, m.start())));
            pieces.add(byteLevel(m.group()));
            last = m.end();
        }
        if (last < s.length()) pieces.add(byteLevel(s.substring(last)));
        return pieces;
    }

    private static String byteLevel(String word) {
        StringBuilder b = new StringBuilder();
        for (byte x : word.getBytes(UTF8)) b.append(BYTE_TO_CHAR[x & 0xff]);
        return b.toString();
    }

    private void encodeWord(String word, IntList out) {
        int[] ids;
        synchronized (cache) {
            ids = cache.get(word);
        }
        if (ids == null) {
            ids = bpe(word);
            synchronized (cache) {
                cache.put(word, ids);
            }
        }
        out.addAll(ids);
    }

    private int[] bpe(String word) {
        byte[] bytes = word.getBytes(UTF8);
        if (ignoreMerges) {
            StringBuilder mapped = new StringBuilder(bytes.length);
            for (byte b : bytes) mapped.append(BYTE_TO_CHAR[b & 0xff]);
            Integer whole = vocab.get(mapped.toString());
            if (whole != null) return new int[] {whole};
        }
        IntList syms = new IntList();
        for (byte b : bytes) {
            int id = byteToId[b & 0xff];
            if (id >= 0) syms.add(id);  // no unk token: tokenizers drops a character the vocabulary lacks
        }
        int n = syms.size;
        int[] s = syms.data;
        // Merge the lowest-ranked adjacent pair (leftmost among equals) until none is in the merge table; words are
        // short, so the quadratic scan costs less than tokenizers' heap would here.
        while (n > 1) {
            int bestRank = Integer.MAX_VALUE;
            int bestAt = -1;
            int bestId = -1;
            for (int i = 0; i + 1 < n; i++) {
                int[] r = merges.get(((long) s[i] << 32) | (s[i + 1] & 0xffffffffL));
                if (r != null && r[0] < bestRank) {
                    bestRank = r[0];
                    bestAt = i;
                    bestId = r[1];
                }
            }
            if (bestAt < 0) break;
            s[bestAt] = bestId;
            System.arraycopy(s, bestAt + 2, s, bestAt + 1, n - bestAt - 2);
            n--;
        }
        int[] out = new int[n];
        System.arraycopy(s, 0, out, 0, n);
        return out;
    }

    // ---- decode -----------------------------------------------------------------------------------------------

    /** Text of ids, as tokenizers' {@code decode(ids, skip_special_tokens=...)}; unknown ids are skipped. */
    public String decode(int[] ids, boolean skipSpecial) {
        return new String(decodeBytes(ids, skipSpecial), UTF8);
    }

    public String decode(int[] ids) {
        return decode(ids, false);
    }

    /** The UTF-8 bytes of ids before the final decode (what a streaming decoder accumulates). */
    public byte[] decodeBytes(int[] ids, boolean skipSpecial) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (int id : ids) appendTokenBytes(id, skipSpecial, out);
        return out.toByteArray();
    }

    void appendTokenBytes(int id, boolean skipSpecial, ByteArrayOutputStream out) {
        String t = idToToken(id);
        if (t == null) return;
        if (skipSpecial && isSpecial(id)) return;
        byte[] mapped = new byte[t.length()];
        for (int i = 0; i < t.length(); i++) {
            Integer b = CHAR_TO_BYTE.get(t.charAt(i));
            if (b == null) {  // not byte-level text (an added token with other characters): its own bytes
                byte[] raw = t.getBytes(UTF8);
                out.write(raw, 0, raw.length);
                return;
            }
            mapped[i] = (byte) (int) b;
        }
        out.write(mapped, 0, mapped.length);
    }

    /**
     * Text of a stream of ids as they arrive: holds back the bytes of an incomplete UTF-8 character (an emoji split
     * over tokens) until the token that completes it, so a chat view never shows a replacement character mid-stream.
     */
    public final class StreamDecoder {
        private final ByteArrayOutputStream pending = new ByteArrayOutputStream();
        private final boolean skipSpecial;

        public StreamDecoder(boolean skipSpecial) {
            this.skipSpecial = skipSpecial;
        }

        /** The text that became complete with this token (possibly empty). */
        public String push(int id) {
            appendTokenBytes(id, skipSpecial, pending);
            byte[] b = pending.toByteArray();
            int complete = completePrefix(b);
            pending.reset();
            pending.write(b, complete, b.length - complete);
            return new String(b, 0, complete, UTF8);
        }

        /** Whatever is left (an incomplete tail decodes to U+FFFD, as the whole-sequence decode would). */
        public String flush() {
            byte[] b = pending.toByteArray();
            pending.reset();
            return new String(b, UTF8);
        }
    }

    /** Length of the longest prefix of b that does not end inside a UTF-8 sequence that may still complete. */
    static int completePrefix(byte[] b) {
        int n = b.length;
        // Look back at most 3 bytes for the lead byte of a sequence that is still short of its length.
        for (int back = 1; back <= 3 && back <= n; back++) {
            int c = b[n - back] & 0xff;
            if ((c & 0xc0) == 0x80) continue;  // continuation byte: keep looking for the lead
            int need = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 1;
            return need > back ? n - back : n;
        }
        return n;
    }

    /** A growable int array (no boxing on the hot path). */
    static final class IntList {
        int[] data = new int[16];
        int size;

        void add(int v) {
            if (size == data.length) data = java.util.Arrays.copyOf(data, size * 2);
            data[size++] = v;
        }

        void addAll(int[] v) {
            for (int x : v) add(x);
        }

        int size() {
            return size;
        }

        int[] toArray() {
            return java.util.Arrays.copyOf(data, size);
        }
    }
}
