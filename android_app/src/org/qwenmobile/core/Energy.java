package org.qwenmobile.core;

import java.io.BufferedReader;
import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The energy arithmetic of runtime/runner/power.cpp ({@code summarize_energy}, {@code read_trace}), line for line, so a
 * phone's report from the app and from {@code qwen-bench} mean the same thing (tests/android checks both on the
 * recorded traces in tests/native/power_traces/).
 *
 * <p>The app feeds it BatteryManager readings: CURRENT_NOW (µA by the documentation, mA or flipped sign on some
 * devices: calibrated here exactly as sysfs values are), the battery intent's voltage (mV) and temperature (0.1 °C),
 * CHARGE_COUNTER (µAh) and capacity (%).
 */
public final class Energy {
    private Energy() {}

    public enum CurrentUnit { AUTO, MICRO_AMP, MILLI_AMP }

    static final String[] PHASES = {"idle", "warmup", "run"};
    // Bounds of the unit guesses (power.cpp): a phone running a model draws 50 mA - 5 A, so a largest |current| below
    // 10,000 cannot be µA and is read as mA; voltages are 3-5 V: >= 100,000 is µV, >= 100 mV, else V.
    static final double MILLI_AMP_CEILING = 10000;
    static final double MICRO_VOLT_FLOOR = 100000;
    static final double MILLI_VOLT_FLOOR = 100;
    static final double MILLI_CELSIUS_FLOOR = 1000;
    static final double THERMAL_PERIOD_S = 1.0;

    /** One reading of every source, as the platform reported it (units differ by OEM). */
    public static final class Sample {
        public double t;
        public String phase;
        public Long currentNow;
        public Long voltageNow;
        public Long chargeCounter;
        public Long capacity;
        public Long batteryTemp;  // 0.1 °C
        public final LinkedHashMap<String, Long> thermal = new LinkedHashMap<String, Long>();

        public Sample(double t, String phase) {
            this.t = t;
            this.phase = phase;
        }
    }

    public static final class Trace {
        public String source = "";
        public double sampleHz;
        public String status = "";
        public long tokens;
        public double runWallS;
        public final List<Sample> samples = new ArrayList<Sample>();
    }

    private static double median(List<Double> v) {
        List<Double> s = new ArrayList<Double>(v);
        Collections.sort(s);
        int n = s.size();
        return n % 2 == 1 ? s.get(n / 2) : 0.5 * (s.get(n / 2 - 1) + s.get(n / 2));
    }

    private interface Field {
        Long get(Sample s);
    }

    /** The bench schema's energy object plus power.cpp's extra fields, in its key order. */
    public static LinkedHashMap<String, Object> summarize(Trace trace, CurrentUnit unit) {
        List<Sample> S = trace.samples;
        LinkedHashMap<String, Object> e = new LinkedHashMap<String, Object>();
        e.put("source", trace.source.isEmpty() ? "(unknown)" : trace.source);
        e.put("sample_hz", trace.sampleHz > 0 ? trace.sampleHz : 1.0);
        List<Object> notes = new ArrayList<Object>();

        boolean hasI = false, hasV = false, hasQ = false, hasCap = false, hasBt = false, hasZone = false;
        double maxI = 0, maxV = 0;
        List<Double> nonzeroI = new ArrayList<Double>();
        for (Sample s : S) {
            if (s.currentNow != null) {
                hasI = true;
                maxI = Math.max(maxI, Math.abs((double) s.currentNow));
                if (s.currentNow != 0) nonzeroI.add((double) s.currentNow);
            }
            if (s.voltageNow != null) {
                hasV = true;
                maxV = Math.max(maxV, Math.abs((double) s.voltageNow));
            }
            hasQ |= s.chargeCounter != null;
            hasCap |= s.capacity != null;
            hasBt |= s.batteryTemp != null;
            hasZone |= !s.thermal.isEmpty();
        }
        List<Object> absent = new ArrayList<Object>();
        if (!hasI) absent.add("current_now");
        if (!hasV) absent.add("voltage_now");
        if (!hasQ) absent.add("charge_counter");
        if (!hasCap) absent.add("capacity");
        if (!hasBt) absent.add("battery_temp");
        if (!hasZone) absent.add("thermal_zones");

        // Units and sign are decided once per trace, so one odd sample cannot flip them mid-run.
        double iScale = 1e-6;
        String iUnit = "uA";
        if (unit == CurrentUnit.MILLI_AMP || (unit == CurrentUnit.AUTO && hasI && maxI < MILLI_AMP_CEILING)) {
            iScale = 1e-3;
            iUnit = "mA";
        }
        if (unit == CurrentUnit.AUTO) iUnit += " (inferred)";
        // A benchmark discharges the battery, so the usual sign is the discharge sign; samples of the other sign (a
        // charger, USB power) count as negative power instead of being folded in.
        final double sign = (!nonzeroI.isEmpty() && median(nonzeroI) < 0) ? -1.0 : 1.0;
        long against = 0;
        for (double v : nonzeroI) against += (v * sign < 0) ? 1 : 0;
        if (against > 0) {
            notes.add(against + " of " + nonzeroI.size() + " current samples have the charging sign: was a charger or USB"
                    + " power connected? Those intervals count as negative power");
        }
        if (!trace.status.isEmpty() && !trace.status.equals("Discharging") && !trace.status.equals("Not charging")) {
            notes.add("battery status was '" + trace.status + "', not 'Discharging': the battery current is not the "
                    + "device's consumption (unplug USB, or use `dumpsys battery unplug` and a Wi-Fi adb connection)");
        }
        double vScale = 1e-6;
        String vUnit = "uV";
        if (hasV && maxV < MICRO_VOLT_FLOOR) {
            if (maxV >= MILLI_VOLT_FLOOR) {
                vScale = 1e-3;
                vUnit = "mV";
            } else {
                vScale = 1.0;
                vUnit = "V";
            }
        }

        // Trapezoidal integral of V·I between consecutive usable samples of the same phase: a sample missing a reading
        // is bridged over, a sample of another phase breaks the chain (idle, warmups and runs never bleed together).
        LinkedHashMap<String, double[]> acc = new LinkedHashMap<String, double[]>();  // phase -> {joules, seconds}
        Sample prev = null;
        for (Sample s : S) {
            if (prev != null && !s.phase.equals(prev.phase)) prev = null;
            if (s.currentNow == null || s.voltageNow == null) continue;
            if (prev != null && s.t > prev.t) {
                double dt = s.t - prev.t;
                double[] slot = acc.get(s.phase);
                if (slot == null) acc.put(s.phase, slot = new double[2]);
                double p0 = sign * (double) prev.currentNow * iScale * (double) prev.voltageNow * vScale;
                double p1 = sign * (double) s.currentNow * iScale * (double) s.voltageNow * vScale;
                slot[0] += 0.5 * (p0 + p1) * dt;
                slot[1] += dt;
            }
            prev = s;
        }
        double tRun = acc.containsKey("run") ? acc.get("run")[1] : 0.0;
        double tIdle = acc.containsKey("idle") ? acc.get("idle")[1] : 0.0;
        Double gross = null, idleW = null, meanW = null, net = null, perToken = null;
        double tWall = trace.runWallS > 0 ? trace.runWallS : tRun;
        if (tRun > 0) {
            meanW = acc.get("run")[0] / tRun;
            gross = meanW * tWall;
            if (tIdle > 0) {
                idleW = acc.get("idle")[0] / tIdle;
                net = (meanW - idleW) * tWall;
            } else {
                net = gross;
                notes.add("no idle baseline (--idle-seconds 0 or too few idle samples): joules are not baseline-subtracted");
            }
            if (trace.tokens > 0) perToken = net / (double) trace.tokens;
        } else if (hasI && hasV) {
            notes.add("fewer than two power samples in the measured run: raise --power-hz or --runs");
        }
        e.put("joules", net);
        e.put("joules_per_token", perToken);
        e.put("mean_power_w", meanW);
        e.put("idle_power_w", idleW);

        // Charge and capacity drawn over the measured run (first minus last run sample that has them).
        e.put("battery_delta_pct", runDelta(S, new Field() {
            @Override
            public Long get(Sample s) {
                return s.capacity;
            }
        }));
        e.put("charge_delta_uah", runDelta(S, new Field() {
            @Override
            public Long get(Sample s) {
                return s.chargeCounter;
            }
        }));

        List<Object> thermal = new ArrayList<Object>();
        double lastT = -1e300;
        for (int k = 0; k < S.size(); k++) {
            Sample s = S.get(k);
            if (s.t - lastT < THERMAL_PERIOD_S && k + 1 != S.size()) continue;
            lastT = s.t;
            if (s.batteryTemp != null) thermal.add(point(s.t, "battery", (double) s.batteryTemp / 10.0));
            for (Map.Entry<String, Long> z : s.thermal.entrySet()) {
                double v = (double) z.getValue();
                thermal.add(point(s.t, z.getKey(), Math.abs(v) >= MILLI_CELSIUS_FLOOR ? v / 1000.0 : v));
            }
        }
        e.put("thermal", thermal);
        e.put("absent_fields", absent);
        e.put("gross_joules", gross);
        e.put("run_seconds", tWall);
        e.put("run_sampled_seconds", tRun);
        e.put("idle_seconds", tIdle);
        e.put("tokens", trace.tokens);
        e.put("samples", (long) S.size());
        e.put("current_unit", hasI ? iUnit : null);
        e.put("current_sign", hasI ? (sign < 0 ? "negative while discharging" : "positive while discharging") : null);
        e.put("voltage_unit", hasV ? vUnit : null);
        e.put("status", trace.status.isEmpty() ? null : trace.status);
        e.put("notes", notes);
        return e;
    }

    private static Double runDelta(List<Sample> S, Field f) {
        Sample first = null, last = null;
        for (Sample s : S) {
            if (!s.phase.equals("run") || f.get(s) == null) continue;
            if (first == null) first = s;
            last = s;
        }
        if (first == null || first == last) return null;
        return (double) f.get(first) - (double) f.get(last);
    }

    private static Map<String, Object> point(double t, String zone, double value) {
        LinkedHashMap<String, Object> p = new LinkedHashMap<String, Object>();
        p.put("t_s", t);
        p.put("zone", zone);
        p.put("value", value);
        return p;
    }

    /**
     * The app's verdict on top of the shared arithmetic: energy measured while the phone was plugged in, with a
     * non-discharging status or with charging-sign samples is not the model's consumption. The numbers stay (as
     * qwen-bench reports them) and {@code valid: false} with the reason says not to use them.
     */
    public static void markValidity(Map<String, Object> energy, boolean plugged) {
        List<String> why = new ArrayList<String>();
        if (plugged) why.add("the phone was plugged in (charger or USB) during the run");
        Object status = energy.get("status");
        if (status != null && !"Discharging".equals(status) && !"Not charging".equals(status)) {
            why.add("battery status '" + status + "'");
        }
        Object notes = energy.get("notes");
        if (notes instanceof List) {
            for (Object n : (List<?>) notes) if (String.valueOf(n).contains("charging sign")) why.add(String.valueOf(n));
        }
        if (energy.get("joules") == null) why.add("no joules (current or voltage not available)");
        energy.put("valid", why.isEmpty());
        energy.put("invalid_reasons", why.isEmpty() ? null : new ArrayList<Object>(why));
    }

    // ---- trace files (power.cpp's JSON-lines format) -------------------------------------------------------------

    public static Trace readTrace(File path) throws IOException {
        Trace t = new Trace();
        BufferedReader in = new BufferedReader(new InputStreamReader(new FileInputStream(path), "UTF-8"));
        try {
            String line;
            int lineno = 0;
            boolean header = false;
            while ((line = in.readLine()) != null) {
                lineno++;
                String trimmed = line.trim();
                if (trimmed.isEmpty() || trimmed.startsWith("#")) continue;
                String where = path.getPath() + " line " + lineno;
                Map<String, Object> j;
                try {
                    j = Json.parseObject(line);
                } catch (Json.ParseException err) {
                    throw new IOException(where + ": " + err.getMessage());
                }
                try {
                    if (!header) {
                        if (!j.containsKey("qwen_power_trace")) {
                            throw new IllegalArgumentException("the first record must be the header with"
                                    + " \"qwen_power_trace\": 1");
                        }
                        t.source = j.containsKey("source") ? Json.str(j.get("source"), "source") : "";
                        t.sampleHz = j.containsKey("sample_hz") ? Json.num(j.get("sample_hz"), "sample_hz") : 0;
                        t.status = j.get("status") != null ? Json.str(j.get("status"), "status") : "";
                        t.tokens = j.containsKey("tokens") ? Json.integer(j.get("tokens"), "tokens") : 0;
                        t.runWallS = j.get("run_wall_s") != null ? Json.num(j.get("run_wall_s"), "run_wall_s") : 0;
                        header = true;
                        continue;
                    }
                    if (!j.containsKey("t")) throw new IllegalArgumentException("missing \"t\"");
                    if (!j.containsKey("phase")) throw new IllegalArgumentException("missing \"phase\"");
                    Sample s = new Sample(Json.num(j.get("t"), "t"), Json.str(j.get("phase"), "phase"));
                    boolean known = false;
                    for (String p : PHASES) known |= p.equals(s.phase);
                    if (!known) {
                        throw new IllegalArgumentException("phase must be idle, warmup or run, got '" + s.phase + "'");
                    }
                    s.currentNow = optLong(j, "current_now");
                    s.voltageNow = optLong(j, "voltage_now");
                    s.chargeCounter = optLong(j, "charge_counter");
                    s.capacity = optLong(j, "capacity");
                    s.batteryTemp = optLong(j, "battery_temp");
                    if (j.get("thermal") != null) {
                        for (Map.Entry<String, Object> z : Json.obj(j.get("thermal"), "thermal").entrySet()) {
                            s.thermal.put(z.getKey(), Json.integer(z.getValue(), "thermal." + z.getKey()));
                        }
                    }
                    if (!t.samples.isEmpty() && s.t < t.samples.get(t.samples.size() - 1).t) {
                        throw new IllegalArgumentException("time goes backwards");
                    }
                    t.samples.add(s);
                } catch (IllegalArgumentException err) {
                    throw new IOException(where + ": " + err.getMessage());
                }
            }
            if (!header) throw new IOException(path + ": empty power trace (no header record)");
        } finally {
            in.close();
        }
        return t;
    }

    private static Long optLong(Map<String, Object> j, String k) {
        Object v = j.get(k);
        return v == null ? null : Json.integer(v, k);
    }

    /** `java -cp classes org.qwenmobile.core.Energy TRACE [ua|ma|auto]`: power.cpp's --power-replay, for the tests. */
    public static void main(String[] args) throws Exception {
        if (args.length < 1 || args.length > 2) {
            System.err.println("usage: Energy TRACE.jsonl [auto|ua|ma]");
            System.exit(2);
        }
        CurrentUnit unit = CurrentUnit.AUTO;
        if (args.length == 2) {
            if (args[1].equals("ua")) unit = CurrentUnit.MICRO_AMP;
            else if (args[1].equals("ma")) unit = CurrentUnit.MILLI_AMP;
            else if (!args[1].equals("auto")) {
                System.err.println("unit must be auto, ua or ma, got '" + args[1] + "'");
                System.exit(2);
            }
        }
        try {
            System.out.println(Json.write(summarize(readTrace(new File(args[0])), unit)));
        } catch (IOException err) {
            System.err.println(err.getMessage());
            System.exit(1);
        }
    }
}
