package org.qwenmobile.app;

import android.graphics.Bitmap;
import org.qwenmobile.core.Bundle;
import org.qwenmobile.core.ImageInput;

/**
 * A decoded {@link Bitmap} -> the runner's image input: scaled with the platform's filter to the bundle size the
 * contract's rule picks ({@link Bundle.Vision#sizeFor}), then packed to RGB ({@link ImageInput#fromArgb}). The choice
 * and the packing are tested on the JVM (core/); this is the only Android-dependent step.
 */
public final class BitmapImages {
    private BitmapImages() {}

    public static ImageInput forBundle(Bitmap bitmap, Bundle.Vision vision) {
        ImageInput.Size size = vision.sizeFor(bitmap.getHeight(), bitmap.getWidth());
        return scaled(bitmap, size.width, size.height);
    }

    /**
     * The bitmap scaled to exactly width x height and packed to RGB. For a size chosen before decoding (the chat's
     * picker: the rule applies to the upright photo, the decoder subsamples and the EXIF rotation comes after).
     */
    public static ImageInput scaled(Bitmap bitmap, int width, int height) {
        // getPixels cannot read hardware bitmaps (API 26+ decoders may return them): work on a software copy.
        Bitmap source = bitmap.getConfig() == Bitmap.Config.ARGB_8888 ? bitmap
                : bitmap.copy(Bitmap.Config.ARGB_8888, false);
        if (source == null) throw new IllegalStateException("image: cannot copy the decoded bitmap to ARGB_8888");
        Bitmap scaled = source.getWidth() == width && source.getHeight() == height ? source
                : Bitmap.createScaledBitmap(source, width, height, true);
        int[] argb = new int[width * height];
        scaled.getPixels(argb, 0, width, 0, 0, width, height);  // non-premultiplied ARGB, row-major
        if (scaled != bitmap) scaled.recycle();
        if (source != bitmap && source != scaled) source.recycle();
        return ImageInput.fromArgb(argb, width, height);
    }
}
