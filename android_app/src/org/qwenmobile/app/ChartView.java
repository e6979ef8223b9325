package org.qwenmobile.app;

import android.content.Context;
import android.graphics.Canvas;
import android.graphics.Color;
import android.graphics.Paint;
import android.view.View;
import java.util.ArrayList;
import java.util.List;

/** Decode tok/s (blue, left scale) and battery temperature (red, right scale) over measured runs. */
final class ChartView extends View {
    private final List<Double> tokS = new ArrayList<Double>();
    private final List<Double> tempC = new ArrayList<Double>();
    private final Paint axis = new Paint(Paint.ANTI_ALIAS_FLAG);
    private final Paint speed = new Paint(Paint.ANTI_ALIAS_FLAG);
    private final Paint temp = new Paint(Paint.ANTI_ALIAS_FLAG);

    ChartView(Context c) {
        super(c);
        axis.setColor(Color.DKGRAY);
        axis.setTextSize(28);
        speed.setColor(Color.rgb(30, 90, 200));
        speed.setStrokeWidth(5);
        temp.setColor(Color.rgb(200, 50, 40));
        temp.setStrokeWidth(5);
    }

    void add(Double decodeTokS, Double batteryTempC) {
        tokS.add(decodeTokS);
        tempC.add(batteryTempC);
        invalidate();
    }

    void clear() {
        tokS.clear();
        tempC.clear();
        invalidate();
    }

    private static double[] range(List<Double> v) {
        double lo = Double.MAX_VALUE, hi = -Double.MAX_VALUE;
        for (Double x : v) {
            if (x == null) continue;
            lo = Math.min(lo, x);
            hi = Math.max(hi, x);
        }
        if (lo > hi) return null;
        if (hi - lo < 1e-9) {
            lo -= 1;
            hi += 1;
        }
        return new double[] {lo, hi};
    }

    private void series(Canvas c, List<Double> v, Paint p, float left, float top, float w, float h) {
        double[] r = range(v);
        if (r == null) return;
        float px = -1, py = -1;
        for (int i = 0; i < v.size(); i++) {
            if (v.get(i) == null) continue;
            float x = left + (v.size() == 1 ? w / 2 : w * i / (v.size() - 1));
            float y = top + h - (float) ((v.get(i) - r[0]) / (r[1] - r[0]) * h);
            c.drawCircle(x, y, 6, p);
            if (px >= 0) c.drawLine(px, py, x, y, p);
            px = x;
            py = y;
        }
    }

    @Override
    protected void onDraw(Canvas c) {
        float left = 90, top = 40, w = getWidth() - 180, h = getHeight() - 90;
        c.drawLine(left, top + h, left + w, top + h, axis);
        c.drawLine(left, top, left, top + h, axis);
        c.drawLine(left + w, top, left + w, top + h, axis);
        double[] rs = range(tokS);
        double[] rt = range(tempC);
        if (rs != null) {
            c.drawText(String.format(java.util.Locale.ROOT, "%.1f", rs[1]), 4, top + 10, speed);
            c.drawText(String.format(java.util.Locale.ROOT, "%.1f", rs[0]), 4, top + h, speed);
        }
        if (rt != null) {
            c.drawText(String.format(java.util.Locale.ROOT, "%.1f°", rt[1]), left + w + 6, top + 10, temp);
            c.drawText(String.format(java.util.Locale.ROOT, "%.1f°", rt[0]), left + w + 6, top + h, temp);
        }
        c.drawText("decode tok/s (blue), battery °C (red) per run", left, top + h + 40, axis);
        series(c, tokS, speed, left, top, w, h);
        series(c, tempC, temp, left, top, w, h);
    }
}
