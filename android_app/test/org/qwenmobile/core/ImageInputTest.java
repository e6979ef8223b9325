package org.qwenmobile.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/**
 * The image half the app owns (runtime/CONTRACT.md, "Images"): the size rule, the ARGB -> RGB packing, the generate
 * request's image field and the manifest's vision section. The chosen sizes were worked out by hand from the rule and
 * agree with runtime/images.py choose_image_size on the same inputs.
 */
public class ImageInputTest {
    private static List<ImageInput.Size> sizes(int... hw) {
        List<ImageInput.Size> out = new ArrayList<ImageInput.Size>();
        for (int i = 0; i < hw.length; i += 2) {
            out.add(new ImageInput.Size(hw[i], hw[i + 1], 1, "encode_image_" + hw[i] + "x" + hw[i + 1]));
        }
        return out;
    }

    private static String chosen(int height, int width, List<ImageInput.Size> sizes) {
        return ImageInput.choose(height, width, sizes).toString();
    }

    @Test
    public void sizeRuleClosestAspectThenLargestWithoutUpscaling() {
        // Square 224 and 448, wide 224x448, tall 448x224 (HxW).
        List<ImageInput.Size> s = sizes(224, 224, 448, 448, 224, 448, 448, 224);
        assertEquals("448x448", chosen(1000, 1000, s));  // both squares fit: the larger
        assertEquals("224x224", chosen(300, 300, s));    // 448^2 = 200704 > 90000 pixels: would upscale
        assertEquals("224x224", chosen(100, 100, s));    // none fits: the smallest of the closest shape
        assertEquals("224x448", chosen(500, 1000, s));   // aspect 2 = the wide size exactly
        // Aspect 1.5: |log 2 - log 1.5| = 0.29 < |log 1 - log 1.5| = 0.41, so wide; it upscales, but is the only one.
        assertEquals("224x448", chosen(100, 150, s));
        assertEquals("448x448", chosen(1000, 1005, s));  // aspect 1.005: both squares are 0.005 away, equally close
        assertEquals("448x224", chosen(2000, 800, s));   // tall, W/H 0.4: |log .5 - log .4| = 0.22
        assertEquals("448x448", chosen(640, 480, s));    // W/H 0.75: square 0.29 away, tall 0.41
        // Within 1 % in log-aspect counts as the same shape: 100x101 (0.00995 away) competes with 100x100 (0 away)
        // and is larger, so it wins when both fit; when neither fits, the smaller does, whatever the list's order.
        assertEquals("100x101", chosen(1000, 1000, sizes(100, 100, 100, 101)));
        assertEquals("100x100", chosen(1000, 1000, sizes(100, 100, 100, 102)));  // 0.0198 away: another shape
        assertEquals("100x100", chosen(50, 50, sizes(100, 101, 100, 100)));
    }

    @Test
    public void sizeRuleRefusesNothingToChooseFrom() {
        try {
            ImageInput.choose(10, 10, new ArrayList<ImageInput.Size>());
            fail();
        } catch (IllegalArgumentException e) {
            assertEquals("the bundle lists no image sizes", e.getMessage());
        }
        try {
            ImageInput.choose(0, 10, sizes(32, 32));
            fail();
        } catch (IllegalArgumentException e) {
            assertEquals("image of 10x0 pixels is empty", e.getMessage());
        }
    }

    @Test
    public void packingKeepsOpaquePixelsAndPutsTransparencyOnWhite() {
        // 3x2 (W x H), rows top to bottom: opaque red, green, blue / opaque (1,2,3), transparent black, half-alpha black.
        int[] argb = {0xffff0000, 0xff00ff00, 0xff0000ff, 0xff010203, 0x00000000, 0x80000000};
        ImageInput im = ImageInput.fromArgb(argb, 3, 2);
        assertEquals(3, im.width);
        assertEquals(2, im.height);
        // Half alpha (128/255) of black over white: 255 * 127/255 = 127 exactly.
        byte[] want = {(byte) 255, 0, 0, 0, (byte) 255, 0, 0, 0, (byte) 255, 1, 2, 3, (byte) 255, (byte) 255, (byte) 255,
            127, 127, 127};
        assertArrayEquals(want, im.rgb);
        assertEquals(255, ImageInput.overWhite(255, 1));   // (255 + 255 * 254) / 255 = 255
        assertEquals(128, ImageInput.overWhite(0, 127));   // 255 * 128 / 255 = 128
        assertEquals(64, ImageInput.overWhite(0, 191));    // 255 * 64 / 255 = 64
        try {
            ImageInput.fromArgb(new int[5], 3, 2);
            fail();
        } catch (IllegalArgumentException e) {
            assertEquals("argb: 5 pixels for a 2x3 image", e.getMessage());
        }
        try {
            new ImageInput(3, 2, new byte[17]);
            fail();
        } catch (IllegalArgumentException e) {
            assertEquals("rgb: 17 bytes; a 2x3 (HxW) RGB image has 18", e.getMessage());
        }
    }

    @Test
    public void base64IsTheJdksEncoding() {
        java.util.Random r = new java.util.Random(3);
        for (int n = 0; n < 40; n++) {
            byte[] data = new byte[n];
            r.nextBytes(data);
            assertEquals("length " + n, java.util.Base64.getEncoder().encodeToString(data), ImageInput.base64(data));
        }
    }

    @Test
    public void generateRequestCarriesTheImageField() throws Exception {
        byte[] rgb = new byte[4 * 2 * 3];
        for (int i = 0; i < rgb.length; i++) rgb[i] = (byte) (i * 11);
        ImageInput im = new ImageInput(4, 2, rgb);
        String line = ServeProtocol.generate(7L, new int[] {152, 150, 153, 5}, 16, ServeProtocol.Sampling.greedy(), true,
                false, im);
        Map<String, Object> m = Json.parseObject(line);
        Map<String, Object> image = Json.obj(m.get("image"), "image");
        assertEquals(Arrays.asList("width", "height", "rgb_base64"), new ArrayList<String>(image.keySet()));
        assertEquals(4L, image.get("width"));
        assertEquals(2L, image.get("height"));
        assertArrayEquals(rgb, java.util.Base64.getDecoder().decode((String) image.get("rgb_base64")));
        assertArrayEquals(new int[] {152, 150, 153, 5}, Json.intArray(m.get("prompt_ids"), "prompt_ids"));
        // Without an image the request is the text request, unchanged.
        String text = ServeProtocol.generate(7L, new int[] {5}, 16, ServeProtocol.Sampling.greedy(), true, false);
        assertEquals(text, ServeProtocol.generate(7L, new int[] {5}, 16, ServeProtocol.Sampling.greedy(), true, false,
                null));
        assertTrue(!text.contains("image"));
    }

    @Test
    public void doneLineWithAnImage() throws Exception {
        ServeProtocol.Done d = ServeProtocol.parse("{\"event\":\"done\",\"id\":1,\"tokens\":[4],\"stop_reason\":"
                + "\"max_new_tokens\",\"prompt_tokens\":6,\"position\":21,\"ttft_ms\":90,\"prefill_tok_s\":200,"
                + "\"decode_tok_s\":null,\"image_encode_ms\":60.5,\"image_tokens\":16,\"rope_position\":13}").done();
        assertEquals(60.5, d.imageEncodeMs, 0);
        assertEquals(16, d.imageTokens);
        assertEquals(Integer.valueOf(13), d.ropePosition);
        ServeProtocol.Done text = ServeProtocol.parse("{\"event\":\"done\",\"tokens\":[4],\"stop_reason\":\"stop_id\","
                + "\"prompt_tokens\":6,\"position\":6,\"ttft_ms\":9,\"prefill_tok_s\":200,\"decode_tok_s\":null}").done();
        assertNull(text.imageEncodeMs);
        assertEquals(0, text.imageTokens);
        assertNull(text.ropePosition);
        try {
            ServeProtocol.parse("{\"event\":\"done\",\"tokens\":[4],\"stop_reason\":\"stop_id\",\"prompt_tokens\":6,"
                    + "\"position\":6,\"ttft_ms\":9,\"prefill_tok_s\":200,\"image_encode_ms\":3}");
            fail();
        } catch (ServeProtocol.ProtocolException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("missing \"image_tokens\""));
        }
    }

    @Test
    public void testCardIsTheHostsSyntheticImage() {
        // Pixels of runtime/images.py synthetic_image(20, 30), printed by Python: (row, column) -> R, G, B.
        int[][] want = {{0, 0, 0, 0, 28}, {19, 29, 255, 255, 228}, {7, 8, 93, 70, 228}, {8, 7, 107, 61, 228},
            {10, 15, 134, 131, 28}, {16, 16, 214, 140, 28}};
        ImageInput card = ImageInput.testCard(20, 30);
        assertEquals(30, card.width);
        assertEquals(20, card.height);
        for (int[] w : want) {
            int i = 3 * (w[0] * 30 + w[1]);
            assertArrayEquals("pixel " + w[0] + "," + w[1], new int[] {w[2], w[3], w[4]},
                    new int[] {card.rgb[i] & 0xff, card.rgb[i + 1] & 0xff, card.rgb[i + 2] & 0xff});
        }
    }

    @Test
    public void benchReportImageRowsFollowTheBenchSchema() throws Exception {
        BenchReport report = new BenchReport("test", "runtime");
        report.add(new BenchReport.Run(8, 2, 10.0, 800.0, 100.0, Arrays.asList(10.0)));
        BenchReport.ImageRow row = new BenchReport.ImageRow(new ImageInput.Size(224, 448, 98, "encode_image_224x448"),
                2 + 98 + 16);
        row.encodeMs.addAll(Arrays.asList(40.0, 44.0));
        row.ttftMs.addAll(Arrays.asList(90.0, 100.0));
        report.images.add(row);
        Map<String, Object> doc = report.toJson();
        Map<String, Object> got = Json.obj(Json.arr(doc.get("images"), "images").get(0), "row");
        assertEquals(Arrays.asList("height", "width", "method", "tokens", "prompt_tokens", "encode_ms", "ttft_ms"),
                new ArrayList<String>(got.keySet()));
        assertEquals(116L, got.get("prompt_tokens"));
        assertEquals(42.0, (Double) Json.obj(got.get("encode_ms"), "e").get("median"), 1e-12);
        assertEquals(95.0, (Double) Json.obj(got.get("ttft_ms"), "t").get("mean"), 1e-12);
        // The schema's images rows (runtime/schemas/bench.schema.json) accept it; a text-only report has none.
        Map<String, Object> schema = TestFiles.json("runtime/schemas/bench.schema.json");
        Map<String, Object> imagesSchema = Json.obj(Json.obj(schema.get("properties"), "p").get("images"), "images");
        Map<String, Object> rowSchema = new LinkedHashMap<String, Object>(Json.obj(imagesSchema.get("items"), "items"));
        rowSchema.put("$defs", schema.get("$defs"));
        assertNull(new JsonSchema(rowSchema).validate(got));
        got.remove("encode_ms");
        assertTrue(new JsonSchema(rowSchema).validate(got) != null);
        report.images.clear();
        assertTrue(!report.toJson().containsKey("images"));
    }

    static Map<String, Object> visionSection() {
        Map<String, Object> v = new LinkedHashMap<String, Object>();
        v.put("image_token_id", 150L);
        v.put("vision_start_token_id", 152L);
        v.put("vision_end_token_id", 153L);
        v.put("patch_size", 16L);
        v.put("spatial_merge_size", 2L);
        v.put("temporal_patch_size", 2L);
        Map<String, Object> pixels = new LinkedHashMap<String, Object>();
        pixels.put("dtype", "uint8");
        pixels.put("layout", "HWC-RGB");
        v.put("pixels", pixels);
        List<Object> images = new ArrayList<Object>();
        int[][] entries = {{224, 224, 49}, {224, 448, 98}};
        for (int[] e : entries) {
            Map<String, Object> m = new LinkedHashMap<String, Object>();
            m.put("method", "encode_image_" + e[0] + "x" + e[1]);
            m.put("height", (long) e[0]);
            m.put("width", (long) e[1]);
            m.put("grid_thw", Json.list(new int[] {1, e[0] / 16, e[1] / 16}));
            m.put("tokens", (long) e[2]);
            images.add(m);
        }
        v.put("images", images);
        Map<String, Object> methods = new LinkedHashMap<String, Object>();
        methods.put("embed", "embed_tokens");
        methods.put("prefill", "prefill_embeddings");
        methods.put("decode", "decode_token_rope");
        v.put("methods", methods);
        return v;
    }

    static Map<String, Object> goodManifest() throws Exception {
        List<Object> cases = Json.arr(TestFiles.json("tests/apps/vectors/manifest_cases.json").get("cases"), "cases");
        return Json.obj(Json.obj(cases.get(0), "c").get("manifest"), "m");
    }

    @Test
    public void manifestVisionSection() throws Exception {
        JsonSchema schema = new JsonSchema(TestFiles.json("runtime/schemas/manifest.schema.json"));
        Map<String, Object> m = goodManifest();
        assertNull(Bundle.fromManifest(new File("."), m, schema, "b").vision());  // a text bundle takes no images
        m.put("vision", visionSection());
        Bundle.Vision v = Bundle.fromManifest(new File("."), m, schema, "b").vision();
        assertEquals(150, v.imageTokenId);
        assertEquals(152, v.visionStartTokenId);
        assertEquals(153, v.visionEndTokenId);
        assertEquals("[224x224, 224x448]", v.sizes.toString());
        assertEquals(98, v.sizes.get(1).tokens);
        assertEquals("encode_image_224x448", v.sizes.get(1).method);
        assertEquals("224x448", v.sizeFor(1080, 1920).toString());
        assertEquals("224x224", v.sizeFor(4000, 3000).toString());
        // The schema is what refuses a malformed section, naming the field.
        Json.obj(Json.arr(visionSectionOf(m).get("images"), "images").get(0), "e").remove("tokens");
        try {
            Bundle.fromManifest(new File("."), m, schema, "b/manifest.json");
            fail();
        } catch (Bundle.BundleException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("b/manifest.json: field 'vision/images/0"));
        }
    }

    private static Map<String, Object> visionSectionOf(Map<String, Object> m) {
        return Json.obj(m.get("vision"), "vision");
    }
}
