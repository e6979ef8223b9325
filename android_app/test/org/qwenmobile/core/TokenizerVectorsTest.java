package org.qwenmobile.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** The tokenizer against Hugging Face tokenizers' ids and text on the shared vectors (tests/apps/make_vectors.py). */
public class TokenizerVectorsTest {
    private static void check(String vectors) throws Exception {
        Map<String, Object> doc = TestFiles.json(vectors);
        BpeTokenizer tok = BpeTokenizer.fromFile(TestFiles.file(Json.str(doc.get("tokenizer"), "tokenizer")));
        List<Object> cases = Json.arr(doc.get("cases"), "cases");
        assertTrue(cases.size() >= 20);
        StringBuilder failures = new StringBuilder();
        for (Object c : cases) {
            Map<String, Object> k = Json.obj(c, "case");
            String text = (String) k.get("text");
            int[] want = Json.intArray(k.get("ids"), "ids");
            int[] got = tok.encode(text);
            if (!java.util.Arrays.equals(want, got)) {
                failures.append("encode ").append(Json.write(text)).append("\n  want ")
                        .append(java.util.Arrays.toString(want)).append("\n  got  ")
                        .append(java.util.Arrays.toString(got)).append('\n');
            }
            String decoded = tok.decode(want);
            if (!decoded.equals(k.get("decoded"))) {
                failures.append("decode ").append(Json.write(text)).append(": got ").append(Json.write(decoded))
                        .append('\n');
            }
        }
        if (failures.length() > 0) fail(vectors + ":\n" + failures);
    }

    @Test
    public void nanoTokenizerMatchesTokenizers() throws Exception {
        check("tests/apps/vectors/tokenizer_nano.json");
    }

    @Test
    public void qwenlikeTokenizerMatchesTokenizers() throws Exception {
        check("tests/apps/vectors/tokenizer_qwenlike.json");
    }

    @Test
    public void preTokenizerSplitsLikeTokenizers() throws Exception {
        // The regex split alone: Unicode whitespace and case folding differences that the ids can hide.
        Map<String, Object> doc = TestFiles.json("tests/apps/vectors/pretokenize.json");
        BpeTokenizer nano = BpeTokenizer.fromFile(TestFiles.file("models/nano/tokenizer.json"));
        BpeTokenizer qwenlike = BpeTokenizer.fromFile(TestFiles.file("tests/apps/vectors/qwenlike_tokenizer.json"));
        StringBuilder failures = new StringBuilder();
        for (Object c : Json.arr(doc.get("cases"), "cases")) {
            Map<String, Object> k = Json.obj(c, "case");
            String text = (String) k.get("text");
            if (!nano.preTokenize(text).equals(k.get("pieces_nano"))) {
                failures.append("nano ").append(Json.write(text)).append(": ").append(nano.preTokenize(text)).append('\n');
            }
            if (!qwenlike.preTokenize(text).equals(k.get("pieces_qwenlike"))) {
                failures.append("qwenlike ").append(Json.write(text)).append(": ").append(qwenlike.preTokenize(text))
                        .append('\n');
            }
        }
        if (failures.length() > 0) fail(failures.toString());
    }

    @Test
    public void streamDecoderHoldsBackSplitCharacters() throws Exception {
        BpeTokenizer tok = BpeTokenizer.fromFile(TestFiles.file("models/nano/tokenizer.json"));
        String text = "I ❤️ 🐍, 👨‍👩‍👧‍👦 and 你好";
        int[] ids = tok.encode(text);
        BpeTokenizer.StreamDecoder s = tok.new StreamDecoder(false);
        StringBuilder b = new StringBuilder();
        for (int id : ids) {
            String piece = s.push(id);
            assertTrue("a replacement character mid-stream: " + piece, piece.indexOf('\ufffd') < 0);
            b.append(piece);
        }
        b.append(s.flush());
        assertEquals(text, b.toString());
        // The emoji must really be split over tokens for this to test anything.
        int split = 0;
        for (int id : ids) if (tok.decode(new int[] {id}).indexOf('\ufffd') >= 0) split++;
        assertTrue("no token of the test text ends inside a character", split > 0);
    }

    @Test
    public void specialTokensAndSkip() throws Exception {
        BpeTokenizer tok = BpeTokenizer.fromFile(TestFiles.file("models/nano/tokenizer.json"));
        int imEnd = tok.tokenToId("<|im_end|>");
        assertEquals(8168, imEnd);
        assertTrue(tok.isSpecial(imEnd));
        assertTrue(!tok.isSpecial(tok.tokenToId("<think>")));  // Qwen keeps <think> in decoded text
        int[] ids = tok.encode("hi<|im_end|><think>");
        assertEquals("hi<think>", tok.decode(ids, true));
    }

    @Test
    public void unsupportedConfigurationsAreRefusedByName() throws Exception {
        Map<String, Object> doc = Json.parseObject(Files.readUtf8(TestFiles.file("tests/apps/vectors/qwenlike_tokenizer.json")));
        Json.obj(doc.get("normalizer"), "n").put("type", "NFKC");
        try {
            new BpeTokenizer(doc, "x.json");
            fail("NFKC accepted");
        } catch (IllegalArgumentException e) {
            assertEquals("x.json: normalizer.type NFKC: only NFC is supported", e.getMessage());
        }
        doc = Json.parseObject(Files.readUtf8(TestFiles.file("tests/apps/vectors/qwenlike_tokenizer.json")));
        Map<String, Object> first = Json.obj(Json.arr(doc.get("added_tokens"), "a").get(0), "t");
        first.put("lstrip", Boolean.TRUE);
        try {
            new BpeTokenizer(doc, "x.json");
            fail("lstrip accepted");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("x.json: added_tokens[0].lstrip is true"));
        }
    }
}
