package org.qwenmobile.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** Statistics as runtime/bench.py computes them, and the report's shape (the schema check is a pytest). */
public class StatsReportTest {
    @Test
    public void percentilesMedianAndExactMean() {
        List<Double> v = Arrays.asList(4.0, 1.0, 3.0, 2.0);
        assertEquals(2.5, Stats.median(v), 0);
        assertEquals(1.3, Stats.percentile(v, 10), 1e-12);  // (4 - 1) * 0.1 = 0.3 between 1 and 2
        assertEquals(3.7, Stats.percentile(v, 90), 1e-12);
        assertEquals(3.0, Stats.median(Arrays.asList(5.0, 3.0, 1.0)), 0);
        assertEquals(7.0, Stats.percentile(Arrays.asList(7.0), 90), 0);
        List<Double> tenths = new ArrayList<Double>();
        double naive = 0;
        for (int i = 0; i < 10; i++) {
            tenths.add(0.1);
            naive += 0.1;
        }
        assertTrue(naive != 1.0);  // what a plain loop gives
        assertEquals(0.1, Stats.mean(tenths), 0);  // fsum(10 x 0.1) = 1.0 exactly, as Python's fmean
        assertEquals(1e100, Stats.fsum(Arrays.asList(1e100, 1.0, -1e100, 1e100)), 0);
        assertEquals(2.0, Stats.fsum(Arrays.asList(1e100, 1.0, -1e100, 1.0)), 0);
    }

    @Test
    public void reportHasOneResultPerLengthAndNullDecodeForOneTokenRuns() {
        BenchReport r = new BenchReport("0.1.0", "test");
        r.setSettings(new int[] {8, 16}, 4, 2, 1, null, 0);
        r.add(new BenchReport.Run(8, 4, 10, 800, 100.0, Arrays.asList(10.0, 10.0, 10.0)));
        r.add(new BenchReport.Run(8, 4, 12, 700, 90.0, Arrays.asList(11.0, 11.0, 11.0)));
        r.add(new BenchReport.Run(16, 1, 20, 800, null, new ArrayList<Double>()));
        Map<String, Object> doc = r.toJson();
        List<?> results = (List<?>) doc.get("results");
        assertEquals(2, results.size());
        Map<?, ?> first = (Map<?, ?>) results.get(0);
        assertEquals(11.0, ((Number) ((Map<?, ?>) first.get("ttft_ms")).get("median")).doubleValue(), 0);
        assertEquals(95.0, ((Number) ((Map<?, ?>) first.get("decode_tok_s")).get("mean")).doubleValue(), 0);
        assertNull(((Map<?, ?>) results.get(1)).get("decode_tok_s"));
        assertEquals("android-app", ((Map<?, ?>) doc.get("producer")).get("name"));
    }

    @Test
    public void randomPromptsAvoidStopIdsAndAreSeeded() {
        HashSet<Integer> avoid = new HashSet<Integer>(Arrays.asList(0, 1, 2, 3, 4, 5, 6, 7));
        int[] a = BenchReport.randomPrompt(10, 500, 3, avoid);
        for (int x : a) assertTrue(x == 8 || x == 9);
        assertTrue(Arrays.equals(a, BenchReport.randomPrompt(10, 500, 3, avoid)));
        assertTrue(!Arrays.equals(BenchReport.randomPrompt(1000, 64, 3, avoid), BenchReport.randomPrompt(1000, 64, 4, avoid)));
    }
}
