package org.qwenmobile.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertSame;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/**
 * The chat screen's image logic: when the Image button is enabled, EXIF orientation (expected pixels worked out by
 * hand from the EXIF table; Pillow's ImageOps.exif_transpose, which the host uses, gives the same on this 2x3 image),
 * the decode plan's sizes and subsampling (by hand), and the one image that goes with the next prompt only.
 */
public class ImageAttachmentTest {
    /** A vision section with these {height, width, tokens} entries. */
    static Bundle.Vision vision(int[]... entries) {
        Map<String, Object> v = ImageInputTest.visionSection();
        List<Object> images = new ArrayList<Object>();
        for (int[] e : entries) {
            Map<String, Object> m = new java.util.LinkedHashMap<String, Object>();
            m.put("method", "encode_image_" + e[0] + "x" + e[1]);
            m.put("height", (long) e[0]);
            m.put("width", (long) e[1]);
            m.put("grid_thw", Json.list(new int[] {1, e[0] / 16, e[1] / 16}));
            m.put("tokens", (long) e[2]);
            images.add(m);
        }
        v.put("images", images);
        return new Bundle.Vision(v);
    }

    /** Square, wide and tall sizes (HxW): 224x224, 224x448, 448x224. */
    static Bundle.Vision threeShapes() {
        return vision(new int[] {224, 224, 49}, new int[] {224, 448, 98}, new int[] {448, 224, 98});
    }

    /** A grey image whose pixel values are 1..n in row-major order (R = G = B). */
    private static ImageInput numbered(int width, int height) {
        byte[] rgb = new byte[width * height * 3];
        for (int i = 0; i < width * height; i++) rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = (byte) (i + 1);
        return new ImageInput(width, height, rgb);
    }

    private static int[][] rows(ImageInput image) {
        int[][] out = new int[image.height][image.width];
        for (int r = 0; r < image.height; r++) {
            for (int c = 0; c < image.width; c++) {
                int i = 3 * (r * image.width + c);
                assertEquals(image.rgb[i], image.rgb[i + 1]);
                assertEquals(image.rgb[i], image.rgb[i + 2]);
                out[r][c] = image.rgb[i];
            }
        }
        return out;
    }

    @Test
    public void imagesAreOfferedOnlyForABundleWithAVisionSection() {
        assertEquals("images: this bundle has no vision section (exported from a text-only checkpoint or with "
                + "--no-vision): it takes text only", ImageAttachment.unavailableReason(null));
        assertNull(ImageAttachment.unavailableReason(threeShapes()));
        try {
            new ImageAttachment.Plan(640, 480, 1, null);
            fail("a plan for a bundle without images");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("images: this bundle has no vision section"));
        }
    }

    @Test
    public void exifOrientationsDisplayThePhotoUpright() {
        ImageInput stored = numbered(3, 2);  // 1 2 3 / 4 5 6
        int[][][] want = {
            null,
            {{1, 2, 3}, {4, 5, 6}},          // 1: as stored
            {{3, 2, 1}, {6, 5, 4}},          // 2: mirrored
            {{6, 5, 4}, {3, 2, 1}},          // 3: rotated 180
            {{4, 5, 6}, {1, 2, 3}},          // 4: flipped
            {{1, 4}, {2, 5}, {3, 6}},        // 5: transposed
            {{4, 1}, {5, 2}, {6, 3}},        // 6: rotate 90 clockwise to display
            {{6, 3}, {5, 2}, {4, 1}},        // 7: transverse
            {{3, 6}, {2, 5}, {1, 4}},        // 8: rotate 90 counter-clockwise to display
        };
        for (int o = 1; o <= 8; o++) {
            ImageInput upright = ImageAttachment.orient(stored, o);
            assertEquals("orientation " + o, ImageAttachment.swapsAxes(o), upright.width == 2);
            for (int r = 0; r < want[o].length; r++) assertArrayEquals("orientation " + o, want[o][r], rows(upright)[r]);
        }
        assertSame(stored, ImageAttachment.orient(stored, 0));  // "unknown": as stored
        assertSame(stored, ImageAttachment.orient(stored, 9));
        assertEquals(6, ImageAttachment.exifFromDegrees(90));
        assertEquals(3, ImageAttachment.exifFromDegrees(180));
        assertEquals(8, ImageAttachment.exifFromDegrees(-90));
        assertEquals(1, ImageAttachment.exifFromDegrees(360));
        try {
            ImageAttachment.exifFromDegrees(45);
            fail();
        } catch (IllegalArgumentException e) {
            assertEquals("orientation: 45 degrees is not a multiple of 90", e.getMessage());
        }
    }

    @Test
    public void decoderSubsamplesWhileBothAxesKeepTheTarget() {
        assertEquals(8, ImageAttachment.sampleSize(4032, 3024, 448, 336));  // 504x378 left; /16 would leave 252 wide
        assertEquals(2, ImageAttachment.sampleSize(896, 448, 448, 224));    // exactly the target at /2
        assertEquals(1, ImageAttachment.sampleSize(895, 448, 448, 224));    // 447 < 448 at /2
        assertEquals(1, ImageAttachment.sampleSize(100, 100, 224, 224));    // upscaled: decode it whole
        assertEquals(4, ImageAttachment.sampleSize(4000, 1000, 224, 224));  // the short axis limits
    }

    @Test
    public void thePlanChoosesTheSizeForTheUprightPhoto() {
        // A portrait photo stored on its side (2000x1000 WxH, EXIF 6): upright 1000x2000, tall, so 448x224 (HxW);
        // the same pixels without the tag are a wide photo.
        ImageAttachment.Plan portrait = new ImageAttachment.Plan(2000, 1000, 6, threeShapes());
        assertEquals(1000, portrait.width);
        assertEquals(2000, portrait.height);
        assertEquals("448x224", portrait.size.toString());
        assertEquals(448, portrait.scaleWidth);   // the stored (landscape) frame before rotating
        assertEquals(224, portrait.scaleHeight);
        assertEquals(4, portrait.sampleSize);     // 500x250 decoded; /8 leaves 250 < 448
        assertFalse(portrait.upscaled());
        ImageAttachment.Plan landscape = new ImageAttachment.Plan(2000, 1000, 1, threeShapes());
        assertEquals("224x448", landscape.size.toString());
        assertEquals(448, landscape.scaleWidth);
        assertEquals(224, landscape.scaleHeight);

        ImageInput scaled = numbered(448, 224);
        ImageInput upright = portrait.orient(scaled);
        assertEquals(224, upright.width);
        assertEquals(448, upright.height);
        // Rotated clockwise: the upright top-left pixel is the stored bottom-left one (row 223, column 0).
        assertEquals((byte) (223 * 448 + 1), upright.rgb[0]);
        try {
            portrait.orient(numbered(224, 448));
            fail("scaled to the wrong frame");
        } catch (IllegalArgumentException e) {
            assertEquals("image: scaled to 224x448 (WxH), the plan says 448x224", e.getMessage());
        }
        try {
            new ImageAttachment.Plan(-1, -1, 1, threeShapes());
            fail();
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("image: the decoder read no size (-1x-1)"));
        }
    }

    @Test
    public void oneAttachedImageDescribedThenConsumedByTheNextTurn() {
        ImageAttachment a = new ImageAttachment();
        assertEquals("no image attached", a.statusLine());
        assertNull(a.take());
        ImageAttachment.Plan portrait = new ImageAttachment.Plan(2000, 1000, 6, threeShapes());
        ImageInput image = portrait.orient(numbered(448, 224));
        a.attach(portrait, image);
        assertTrue(a.attached());
        assertEquals("image attached: 1000x2000 (WxH) -> 448x224 (HxW), 98 image tokens, EXIF orientation 6 applied",
                a.statusLine());
        try {
            a.attach(portrait, numbered(448, 224));  // the stored frame, not rotated
            fail("an image at another size than the plan's");
        } catch (IllegalArgumentException e) {
            assertEquals("image: 224x448 (HxW) pixels, but the plan's size is 448x224 (HxW)", e.getMessage());
        }
        assertSame(image, a.image());  // the failed attach left the earlier one
        ImageAttachment.Plan small = new ImageAttachment.Plan(100, 100, 1, threeShapes());
        ImageInput smallImage = numbered(224, 224);
        a.attach(small, smallImage);  // replaces
        assertEquals("image attached: 100x100 (WxH) -> 224x224 (HxW), 49 image tokens, upscaled: smaller than every "
                + "size of its shape", a.statusLine());
        assertSame(smallImage, a.take());
        assertFalse(a.attached());
        assertEquals("no image attached", a.statusLine());
        assertNull(a.take());
        a.attach(small, smallImage);
        a.clear();
        assertNull(a.take());
        assertEquals("[image 448x224]", ImageAttachment.transcriptMark(image));
    }

    @Test
    public void decodeFailuresSayWhy() {
        assertEquals("image: cannot decode the picked file (image/heic): HEIF decodes from Android 9 (API 28); this "
                + "phone runs API 26", ImageAttachment.decodeFailure("image/heic", 26));
        assertEquals("image: cannot decode the picked file (image/heic): BitmapFactory read no image from it (JPEG, "
                + "PNG, WebP, GIF, BMP decode everywhere, HEIF from Android 9); the file may be damaged or not an image",
                ImageAttachment.decodeFailure("image/heic", 30));
        assertTrue(ImageAttachment.decodeFailure(null, 34).startsWith("image: cannot decode the picked file (type "
                + "unknown): BitmapFactory read no image"));
    }

    @Test
    public void thumbnailPixelsAreTheModelsPixels() {
        ImageInput image = new ImageInput(2, 1, new byte[] {0x11, 0x22, 0x33, (byte) 0xff, 0, (byte) 0x80});
        assertArrayEquals(new int[] {0xff112233, 0xffff0080}, ImageAttachment.argb(image));
        ImageInput card = ImageInput.testCard(20, 30);
        assertArrayEquals(card.rgb, ImageInput.fromArgb(ImageAttachment.argb(card), 30, 20).rgb);
    }

    @Test
    public void theAttachedImageGoesWithTheNextPromptOnly() throws Exception {
        BpeTokenizer nano = BpeTokenizer.fromFile(TestFiles.file("models/nano/tokenizer.json"));
        int imEnd = nano.tokenToId("<|im_end|>");
        ChatSessionTest.FakeRunner runner = new ChatSessionTest.FakeRunner();
        runner.imageTokens = 98;
        runner.replies.add(new int[] {5, imEnd});
        runner.replies.add(new int[] {6, imEnd});
        ServeClient client = new ServeClient(runner.toApp, runner.fromApp);
        runner.start();
        ChatSession chat = new ChatSession(client, nano, client.awaitReady().stopIds, false);
        Map<String, Object> manifest = ImageInputTest.goodManifest();
        manifest.put("vision", ImageInputTest.visionSection());  // 224x224 and 224x448 (HxW)
        chat.vision = Bundle.fromManifest(new File("."), manifest,
                new JsonSchema(TestFiles.json("runtime/schemas/manifest.schema.json")), "b").vision();
        ImageAttachment a = new ImageAttachment();
        ImageAttachment.Plan plan = new ImageAttachment.Plan(1600, 800, 1, chat.vision);
        assertEquals("224x448", plan.size.toString());
        ImageInput card = plan.orient(ImageInput.testCard(224, 448));
        a.attach(plan, card);
        chat.send("What is this?", a.take(), null);
        chat.send("And now?", a.take(), null);
        Map<String, Object> first = Json.obj(runner.requests.get(0).get("image"), "image");
        assertEquals(448L, first.get("width"));
        assertEquals(224L, first.get("height"));
        assertArrayEquals(card.rgb, java.util.Base64.getDecoder().decode((String) first.get("rgb_base64")));
        assertNull(runner.requests.get(1).get("image"));
        assertEquals(runner.consumed.size(), chat.position());
        client.quit();
    }
}
