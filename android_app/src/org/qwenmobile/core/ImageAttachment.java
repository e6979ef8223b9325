package org.qwenmobile.core;

/**
 * The chat screen's image, minus Android: whether the bundle takes images at all, how a picked photo is decoded (its
 * EXIF orientation, the size the contract's rule picks for the upright photo, the decoder's subsampling), and the one
 * image waiting for the next prompt with the line that describes it. {@code app/ChatActivity} does the platform calls
 * (picker, {@code BitmapFactory}, {@code app/BitmapImages}) in the order {@link Plan} gives.
 */
public final class ImageAttachment {
    /** Null when the bundle takes images; otherwise why the Image button is disabled, in one line. */
    public static String unavailableReason(Bundle.Vision vision) {
        if (vision == null) {
            return "images: this bundle has no vision section (exported from a text-only checkpoint or with "
                    + "--no-vision): it takes text only";
        }
        if (vision.sizes.isEmpty()) return "images: this bundle's vision section lists no image sizes";
        return null;
    }

    /**
     * The one line for a picked file the platform decoder reads no image from (BitmapFactory returns null or no
     * size); mimeType may be null (the provider did not say).
     */
    public static String decodeFailure(String mimeType, int apiLevel) {
        String what = "image: cannot decode the picked file (" + (mimeType == null ? "type unknown" : mimeType) + ")";
        boolean heif = mimeType != null && (mimeType.equals("image/heic") || mimeType.equals("image/heif"));
        if (heif && apiLevel < 28) return what + ": HEIF decodes from Android 9 (API 28); this phone runs API " + apiLevel;
        return what + ": BitmapFactory read no image from it (JPEG, PNG, WebP, GIF, BMP decode everywhere, HEIF from "
                + "Android 9); the file may be damaged or not an image";
    }

    /** EXIF orientations 5..8 store the photo on its side: the upright photo's height is the stored width. */
    public static boolean swapsAxes(int exifOrientation) {
        return exifOrientation >= 5 && exifOrientation <= 8;
    }

    /**
     * MediaStore's {@code orientation} column (clockwise degrees to display upright) as the EXIF tag, for decoders
     * that give no EXIF: 0 -> 1, 90 -> 6, 180 -> 3, 270 -> 8; anything else is not a rotation MediaStore writes.
     */
    public static int exifFromDegrees(int degrees) {
        switch (((degrees % 360) + 360) % 360) {
            case 0: return 1;
            case 90: return 6;
            case 180: return 3;
            case 270: return 8;
            default: throw new IllegalArgumentException("orientation: " + degrees + " degrees is not a multiple of 90");
        }
    }

    /**
     * The stored image, transformed to display upright as EXIF orientation {@code o} says (what runtime/images.py's
     * {@code ImageOps.exif_transpose} does on the host): 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90
     * clockwise, 7 transverse, 8 rotate 90 counter-clockwise. Unknown values (0, > 8) leave the image as stored.
     */
    public static ImageInput orient(ImageInput stored, int o) {
        if (o < 2 || o > 8) return stored;
        int h = stored.height;
        int w = stored.width;
        boolean swap = swapsAxes(o);
        int outH = swap ? w : h;
        int outW = swap ? h : w;
        byte[] out = new byte[stored.rgb.length];  // [outH, outW, 3]
        for (int r = 0; r < outH; r++) {
            for (int c = 0; c < outW; c++) {
                int sr;
                int sc;
                switch (o) {
                    case 2: sr = r; sc = w - 1 - c; break;
                    case 3: sr = h - 1 - r; sc = w - 1 - c; break;
                    case 4: sr = h - 1 - r; sc = c; break;
                    case 5: sr = c; sc = r; break;
                    case 6: sr = h - 1 - c; sc = r; break;
                    case 7: sr = h - 1 - c; sc = w - 1 - r; break;
                    default: sr = c; sc = w - 1 - r; break;  // 8
                }
                System.arraycopy(stored.rgb, 3 * (sr * w + sc), out, 3 * (r * outW + c), 3);
            }
        }
        return new ImageInput(outW, outH, out);
    }

    /**
     * The largest power of two the decoder may subsample by (BitmapFactory's {@code inSampleSize}) and still leave at
     * least target pixels on both axes, assuming it rounds down; 1 when the target is larger than the image.
     */
    public static int sampleSize(int width, int height, int targetWidth, int targetHeight) {
        int s = 1;
        while (s <= (1 << 29) / 2 && width / (2 * s) >= targetWidth && height / (2 * s) >= targetHeight) s *= 2;
        return s;
    }

    /** How one picked photo becomes the runner's input, from its stored size and EXIF orientation. */
    public static final class Plan {
        public final int storedWidth;
        public final int storedHeight;
        public final int orientation;
        /** The upright photo, the size the contract's rule picks for it (runtime/CONTRACT.md, "Images"). */
        public final int width;
        public final int height;
        public final ImageInput.Size size;
        /** Decode subsampled by this, scale the stored-orientation bitmap to scaleWidth x scaleHeight, then orient. */
        public final int sampleSize;
        public final int scaleWidth;
        public final int scaleHeight;

        public Plan(int storedWidth, int storedHeight, int orientation, Bundle.Vision vision) {
            String why = unavailableReason(vision);
            if (why != null) throw new IllegalArgumentException(why);
            if (storedWidth < 1 || storedHeight < 1) {
                throw new IllegalArgumentException("image: the decoder read no size (" + storedWidth + "x" + storedHeight
                        + "): not an image it can decode");
            }
            this.storedWidth = storedWidth;
            this.storedHeight = storedHeight;
            this.orientation = orientation;
            boolean swap = swapsAxes(orientation);
            width = swap ? storedHeight : storedWidth;
            height = swap ? storedWidth : storedHeight;
            size = vision.sizeFor(height, width);
            scaleWidth = swap ? size.height : size.width;
            scaleHeight = swap ? size.width : size.height;
            sampleSize = ImageAttachment.sampleSize(storedWidth, storedHeight, scaleWidth, scaleHeight);
        }

        /** The scaled stored-orientation pixels -> the upright image at {@link #size}. */
        public ImageInput orient(ImageInput scaled) {
            if (scaled.width != scaleWidth || scaled.height != scaleHeight) {
                throw new IllegalArgumentException("image: scaled to " + scaled.width + "x" + scaled.height
                        + " (WxH), the plan says " + scaleWidth + "x" + scaleHeight);
            }
            return ImageAttachment.orient(scaled, orientation);
        }

        /** True when the picked photo has fewer pixels than the size it goes to (the rule found none that fits). */
        public boolean upscaled() {
            return (long) size.height * size.width > (long) height * width;
        }
    }

    private Plan plan;
    private ImageInput image;

    /** Attaches the image the next prompt carries, replacing any earlier one. */
    public void attach(Plan plan, ImageInput image) {
        if (image.width != plan.size.width || image.height != plan.size.height) {
            throw new IllegalArgumentException("image: " + image.height + "x" + image.width + " (HxW) pixels, but the "
                    + "plan's size is " + plan.size + " (HxW)");
        }
        this.plan = plan;
        this.image = image;
    }

    public boolean attached() {
        return image != null;
    }

    public ImageInput image() {
        return image;
    }

    public void clear() {
        plan = null;
        image = null;
    }

    /** The image for the turn being sent, which consumes it (one image per turn); null when none is attached. */
    public ImageInput take() {
        ImageInput out = image;
        clear();
        return out;
    }

    /**
     * "image attached: 4032x3024 (WxH) -> 448x336 (HxW), 192 image tokens", with what else happened to it (upscaled,
     * EXIF rotation). The photo's size is the platform's W x H; the bundle's is the contract's H x W.
     */
    public String statusLine() {
        if (plan == null) return "no image attached";
        StringBuilder s = new StringBuilder("image attached: ");
        s.append(plan.width).append('x').append(plan.height).append(" (WxH) -> ").append(plan.size)
                .append(" (HxW), ").append(plan.size.tokens).append(" image tokens");
        if (plan.upscaled()) s.append(", upscaled: smaller than every size of its shape");
        if (plan.orientation >= 2 && plan.orientation <= 8) {
            s.append(", EXIF orientation ").append(plan.orientation).append(" applied");
        }
        return s.toString();
    }

    /** Opaque ARGB ints of an RGB image (row-major), for the thumbnail of what the model sees. */
    public static int[] argb(ImageInput image) {
        int[] out = new int[image.width * image.height];
        for (int i = 0; i < out.length; i++) {
            out[i] = 0xff000000 | (image.rgb[3 * i] & 0xff) << 16 | (image.rgb[3 * i + 1] & 0xff) << 8
                    | (image.rgb[3 * i + 2] & 0xff);
        }
        return out;
    }

    /** The transcript's mark for a user turn that carried an image, e.g. "[image 448x336]". */
    public static String transcriptMark(ImageInput image) {
        return "[image " + image.height + "x" + image.width + "]";
    }
}
