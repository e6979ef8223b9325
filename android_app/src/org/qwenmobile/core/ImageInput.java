package org.qwenmobile.core;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * An image as the runner takes it (runtime/CONTRACT.md, "Images"; runtime/runner/SERVE.md, generate's {@code image}):
 * RGB bytes, 3 per pixel, rows top to bottom, at exactly one of the bundle's sizes. The app decodes and scales with the
 * platform ({@code app/BitmapImages}); this class holds what does not need Android: which size an image goes to (the
 * contract's one rule, as runtime/images.py {@code choose_image_size}), the ARGB to RGB packing, and the request field.
 */
public final class ImageInput {
    /** |log(aspect) - log(aspect')| below this: the same shape (runtime/images.py SAME_ASPECT). */
    static final double SAME_ASPECT = 0.01;

    /** One entry of the manifest's {@code vision.images}. */
    public static final class Size {
        public final int height;
        public final int width;
        public final int tokens;
        public final String method;

        public Size(int height, int width, int tokens, String method) {
            this.height = height;
            this.width = width;
            this.tokens = tokens;
            this.method = method;
        }

        @Override
        public String toString() {
            return height + "x" + width;
        }
    }

    public final int width;
    public final int height;
    public final byte[] rgb;  // [height, width, 3]

    public ImageInput(int width, int height, byte[] rgb) {
        if (width < 1 || height < 1) throw new IllegalArgumentException("image of " + width + "x" + height + " pixels");
        if (rgb.length != (long) width * height * 3) {
            throw new IllegalArgumentException("rgb: " + rgb.length + " bytes; a " + height + "x" + width
                    + " (HxW) RGB image has " + (long) width * height * 3);
        }
        this.width = width;
        this.height = height;
        this.rgb = rgb;
    }

    /**
     * The size an image of height x width pixels is scaled to: of the sizes closest in aspect ratio (within 1 %), the
     * largest that does not upscale the image (h*w at most its pixels), else the smallest of them.
     */
    public static Size choose(int height, int width, List<Size> sizes) {
        if (sizes.isEmpty()) throw new IllegalArgumentException("the bundle lists no image sizes");
        if (height < 1 || width < 1) throw new IllegalArgumentException("image of " + width + "x" + height + " pixels is empty");
        double best = Double.MAX_VALUE;
        for (Size s : sizes) best = Math.min(best, aspectGap(s, height, width));
        Size fitting = null;
        Size smallest = null;
        long pixels = (long) height * width;
        for (Size s : sizes) {
            if (aspectGap(s, height, width) > best + SAME_ASPECT) continue;
            long area = (long) s.height * s.width;
            // Ties in area: the later entry, as Python's stable sort then [-1] picks.
            if (area <= pixels && (fitting == null || area >= (long) fitting.height * fitting.width)) fitting = s;
            if (smallest == null || area < (long) smallest.height * smallest.width) smallest = s;
        }
        return fitting != null ? fitting : smallest;
    }

    private static double aspectGap(Size s, int height, int width) {
        return Math.abs(Math.log((double) s.width / s.height) - Math.log((double) width / height));
    }

    /**
     * {@code Bitmap.getPixels}' non-premultiplied ARGB ints (row-major) -> RGB bytes. Transparent pixels are composited
     * onto white, as runtime/images.py decode_image does (the model never sees what colour hides under alpha 0).
     */
    public static ImageInput fromArgb(int[] argb, int width, int height) {
        if (argb.length != (long) width * height) {
            throw new IllegalArgumentException("argb: " + argb.length + " pixels for a " + height + "x" + width + " image");
        }
        byte[] rgb = new byte[argb.length * 3];
        for (int i = 0; i < argb.length; i++) {
            int p = argb[i];
            int a = p >>> 24;
            int r = (p >> 16) & 0xff;
            int g = (p >> 8) & 0xff;
            int b = p & 0xff;
            if (a != 255) {
                r = overWhite(r, a);
                g = overWhite(g, a);
                b = overWhite(b, a);
            }
            rgb[3 * i] = (byte) r;
            rgb[3 * i + 1] = (byte) g;
            rgb[3 * i + 2] = (byte) b;
        }
        return new ImageInput(width, height, rgb);
    }

    /** c over white at alpha a (0..255), rounded to the nearest level. */
    static int overWhite(int c, int a) {
        return (c * a + 255 * (255 - a) + 127) / 255;
    }

    /**
     * runtime/images.py synthetic_image: a fixed test card (red and green ramps, a blue checkerboard of 8-pixel
     * squares), so benchmarks time the same pixels on every device and the host without a file.
     */
    public static ImageInput testCard(int height, int width) {
        byte[] rgb = new byte[height * width * 3];
        for (int r = 0; r < height; r++) {
            for (int c = 0; c < width; c++) {
                int i = 3 * (r * width + c);
                rgb[i] = (byte) (r * 255 / Math.max(height - 1, 1));
                rgb[i + 1] = (byte) (c * 255 / Math.max(width - 1, 1));
                rgb[i + 2] = (byte) (((r / 8 + c / 8) % 2) * 200 + 28);
            }
        }
        return new ImageInput(width, height, rgb);
    }

    /** The generate request's {@code image} field. */
    public Map<String, Object> requestField() {
        Map<String, Object> m = new LinkedHashMap<String, Object>();
        m.put("width", (long) width);
        m.put("height", (long) height);
        m.put("rgb_base64", base64(rgb));
        return m;
    }

    private static final char[] ALPHABET =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".toCharArray();

    /** RFC 4648 base64 with padding (java.util.Base64 needs API 26; android.util.Base64 is a stub on the JVM). */
    static String base64(byte[] data) {
        StringBuilder out = new StringBuilder((data.length + 2) / 3 * 4);
        for (int i = 0; i < data.length; i += 3) {
            int n = data.length - i;
            int bits = (data[i] & 0xff) << 16 | (n > 1 ? (data[i + 1] & 0xff) << 8 : 0) | (n > 2 ? data[i + 2] & 0xff : 0);
            out.append(ALPHABET[bits >> 18 & 63]).append(ALPHABET[bits >> 12 & 63]);
            out.append(n > 1 ? ALPHABET[bits >> 6 & 63] : '=').append(n > 2 ? ALPHABET[bits & 63] : '=');
        }
        return out.toString();
    }
}
