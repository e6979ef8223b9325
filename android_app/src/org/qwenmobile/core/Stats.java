package org.qwenmobile.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** The bench schema's stats object, computed as runtime/bench.py does (numpy's linear percentile, statistics.median). */
public final class Stats {
    private Stats() {}

    public static double percentile(List<Double> values, double q) {
        List<Double> s = sorted(values);
        if (s.size() == 1) return s.get(0);
        double pos = (s.size() - 1) * q / 100.0;
        int lo = (int) pos;
        int hi = Math.min(lo + 1, s.size() - 1);
        return s.get(lo) + (s.get(hi) - s.get(lo)) * (pos - lo);
    }

    public static double median(List<Double> values) {
        List<Double> s = sorted(values);
        int n = s.size();
        return n % 2 == 1 ? s.get(n / 2) : (s.get(n / 2 - 1) + s.get(n / 2)) / 2.0;
    }

    /** Python's statistics.fmean: the float sum (math.fsum, exactly rounded) over n. */
    public static double mean(List<Double> values) {
        return fsum(values) / values.size();
    }

    /** Shewchuk's exactly rounded sum, as math.fsum computes it (a plain loop can differ in the last bits). */
    static double fsum(List<Double> values) {
        List<Double> partials = new ArrayList<Double>();
        for (double x0 : values) {
            double x = x0;
            int i = 0;
            for (double y : partials) {
                if (Math.abs(x) < Math.abs(y)) {
                    double t = x;
                    x = y;
                    y = t;
                }
                double hi = x + y;
                double lo = y - (hi - x);
                if (lo != 0.0) partials.set(i++, lo);
                x = hi;
            }
            while (partials.size() > i) partials.remove(partials.size() - 1);
            partials.add(x);
        }
        double total = 0.0;
        if (partials.isEmpty()) return total;
        int n = partials.size() - 1;
        total = partials.get(n);
        // Round-half-even correction of the top two partials, as CPython does.
        while (n > 0) {
            double x = total;
            double y = partials.get(--n);
            total = x + y;
            double yr = total - x;
            double lo = y - yr;
            if (lo != 0.0) {
                if (n > 0 && ((lo < 0 && partials.get(n - 1) < 0) || (lo > 0 && partials.get(n - 1) > 0))) {
                    y = lo * 2;
                    x = total + y;
                    yr = x - total;
                    if (y == yr) total = x;
                }
                break;
            }
        }
        return total;
    }

    public static Map<String, Object> of(List<Double> values) {
        if (values.isEmpty()) throw new IllegalArgumentException("stats of no values");
        LinkedHashMap<String, Object> m = new LinkedHashMap<String, Object>();
        m.put("median", median(values));
        m.put("p10", percentile(values, 10));
        m.put("p90", percentile(values, 90));
        m.put("mean", mean(values));
        m.put("min", sorted(values).get(0));
        m.put("max", sorted(values).get(values.size() - 1));
        return m;
    }

    private static List<Double> sorted(List<Double> v) {
        List<Double> s = new ArrayList<Double>(v);
        Collections.sort(s);
        return s;
    }
}
