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
        // getPixels cannot read hardware bitmaps (API 26+ decoders may return them): work on a software copy.
        Bitmap source = bitmap.getConfig() == Bitmap.Config.ARGB_8888 ? bitmap
                : bitmap.copy(Bitmap.Config.ARGB_8888, false);
        Bitmap scaled = source.getWidth() == size.width && source.getHeight() == size.height ? source
                : Bitmap.createScaledBitmap(source, size.width, size.height, true);
        int[] argb = new int[size.width * size.height];
        scaled.getPixels(argb, 0, size.width, 0, 0, size.width, size.height);  // non-premultiplied ARGB, row-major
        if (scaled != bitmap) scaled.recycle();
        if (source != bitmap && source != scaled) source.recycle();
        return ImageInput.fromArgb(argb, size.width, size.height);
    }
}
