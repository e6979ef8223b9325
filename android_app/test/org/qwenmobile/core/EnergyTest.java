package org.qwenmobile.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.FileOutputStream;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/**
 * Energy on the recorded traces of tests/native/power_traces against the values worked out by hand in
 * tests/native/test_power.py (the C++ replay is compared field by field in tests/android/test_android_logic.py).
 */
public class EnergyTest {
    private static final double TOL = 1e-9;

    private static Map<String, Object> replay(String name, Energy.CurrentUnit unit) throws Exception {
        return Energy.summarize(Energy.readTrace(TestFiles.file("tests/native/power_traces/" + name)), unit);
    }

    private static double num(Map<String, Object> e, String k) {
        return ((Number) e.get(k)).doubleValue();
    }

    @Test
    public void pixelLikeMicroAmpsNegative() throws Exception {
        Map<String, Object> e = replay("pixel_like_ua.jsonl", Energy.CurrentUnit.AUTO);
        assertEquals(1.2, num(e, "idle_power_w"), TOL);
        assertEquals(3.82, num(e, "mean_power_w"), TOL);
        assertEquals(8.404, num(e, "gross_joules"), TOL);
        assertEquals(5.764, num(e, "joules"), TOL);
        assertEquals(0.1441, num(e, "joules_per_token"), TOL);
        assertEquals(1200, num(e, "charge_delta_uah"), 0);
        assertEquals(1, num(e, "battery_delta_pct"), 0);
        assertEquals("uA (inferred)", e.get("current_unit"));
        assertEquals("negative while discharging", e.get("current_sign"));
        assertTrue(((List<?>) e.get("absent_fields")).isEmpty());
        assertTrue(((List<?>) e.get("notes")).isEmpty());
        List<?> thermal = (List<?>) e.get("thermal");
        assertEquals(18, thermal.size());
        Map<?, ?> last = (Map<?, ?>) thermal.get(17);
        assertEquals(4.5, ((Number) last.get("t_s")).doubleValue(), 0);
        assertEquals("skin-therm", last.get("zone"));
        assertEquals(33.9, ((Number) last.get("value")).doubleValue(), TOL);
    }

    @Test
    public void samsungLikeMilliAmpsPositiveWithAFailedRead() throws Exception {
        Map<String, Object> e = replay("samsung_like_ma.jsonl", Energy.CurrentUnit.AUTO);
        assertEquals("mA (inferred)", e.get("current_unit"));
        assertEquals("mV", e.get("voltage_unit"));
        assertEquals("positive while discharging", e.get("current_sign"));
        assertEquals(0.9875, num(e, "idle_power_w"), TOL);
        assertEquals(7.1225 / 3, num(e, "mean_power_w"), TOL);
        assertEquals(4.16, num(e, "joules"), TOL);
        assertEquals(0.08, num(e, "joules_per_token"), TOL);
        assertNull(e.get("charge_delta_uah"));
        assertEquals(Arrays.asList("charge_counter", "battery_temp"), e.get("absent_fields"));
        // Read as µA, the same trace draws a thousandth of the power.
        Map<String, Object> ua = replay("samsung_like_ma.jsonl", Energy.CurrentUnit.MICRO_AMP);
        assertEquals("uA", ua.get("current_unit"));
        assertEquals(4.16e-3, num(ua, "joules"), TOL);
    }

    @Test
    public void noVoltageGivesChargeOnly() throws Exception {
        Map<String, Object> e = replay("no_voltage.jsonl", Energy.CurrentUnit.AUTO);
        for (String k : new String[] {"joules", "joules_per_token", "mean_power_w", "idle_power_w"}) assertNull(k, e.get(k));
        assertTrue(((List<?>) e.get("absent_fields")).contains("voltage_now"));
        assertEquals(1000, num(e, "charge_delta_uah"), 0);
        Energy.markValidity(e, false);
        assertEquals(Boolean.FALSE, e.get("valid"));
    }

    @Test
    public void chargerConnectedIsFlaggedAndInvalid() throws Exception {
        Map<String, Object> e = replay("usb_powered.jsonl", Energy.CurrentUnit.AUTO);
        assertEquals(-1.2, num(e, "joules"), TOL);
        assertEquals("Charging", e.get("status"));
        String notes = e.get("notes").toString();
        assertTrue(notes, notes.contains("charging sign") && notes.contains("not 'Discharging'"));
        Energy.markValidity(e, true);
        assertEquals(Boolean.FALSE, e.get("valid"));
        assertTrue(e.get("invalid_reasons").toString().contains("plugged in"));
        Map<String, Object> good = replay("pixel_like_ua.jsonl", Energy.CurrentUnit.AUTO);
        Energy.markValidity(good, false);
        assertEquals(Boolean.TRUE, good.get("valid"));
        assertNull(good.get("invalid_reasons"));
    }

    @Test
    public void badTraceNamesFileAndLine() throws Exception {
        File bad = File.createTempFile("bad", ".jsonl");
        FileOutputStream out = new FileOutputStream(bad);
        out.write("{\"qwen_power_trace\": 1}\n{\"t\": 0, \"phase\": \"idle\"}\n{\"t\": 1, \"phase\": \"sprint\"}\n"
                .getBytes("UTF-8"));
        out.close();
        try {
            Energy.readTrace(bad);
            fail();
        } catch (java.io.IOException e) {
            assertEquals(bad.getPath() + " line 3: phase must be idle, warmup or run, got 'sprint'", e.getMessage());
        }
    }
}
