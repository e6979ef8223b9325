package org.qwenmobile.app;

import android.content.Context;
import android.content.Intent;
import android.content.IntentFilter;
import android.os.BatteryManager;
import android.os.Build;
import android.os.PowerManager;
import android.os.SystemClock;
import java.io.File;
import java.lang.reflect.Method;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.qwenmobile.core.BenchReport;
import org.qwenmobile.core.Bundle;
import org.qwenmobile.core.Energy;
import org.qwenmobile.core.Files;
import org.qwenmobile.core.ImageInput;
import org.qwenmobile.core.Json;
import org.qwenmobile.core.ServeProtocol;

/**
 * The benchmark, shared by the screen and the headless entry points: an idle baseline, then per prompt length warmups
 * and measured runs (each waits for the thermal status to be back to none first), with the battery sampled at a fixed
 * rate throughout; energy by the shared arithmetic (power.cpp's), results in the bench schema.
 */
final class BenchRunner {
    interface Progress {
        void onStatus(String text);

        void onRun(Map<String, Object> perRun);
    }

    static final class Settings {
        int[] promptLengths = {128};
        int generate = 64;
        int runs = 5;
        int warmup = 1;
        long seed = 0;
        double idleSeconds = 5;
        /** A bundle with a vision section: add the report's images rows (false: as qwen-bench --no-image-rows). */
        boolean imageRows = true;
        double sampleHz = 5;
        long thermalTimeoutMs = 10 * 60 * 1000L;
    }

    private final Context context;
    private final List<Energy.Sample> samples = new ArrayList<Energy.Sample>();
    private volatile String phase = "idle";
    private volatile boolean pluggedSeen;
    private long t0;

    BenchRunner(Context context) {
        this.context = context.getApplicationContext();
    }

    private Intent batteryIntent() {
        return context.registerReceiver(null, new IntentFilter(Intent.ACTION_BATTERY_CHANGED));
    }

    private static Long prop(BatteryManager bm, int id) {
        long v = bm.getLongProperty(id);
        // Unsupported properties read Long.MIN_VALUE (or 0 on some older devices for the current): absent, not zero.
        return v == Long.MIN_VALUE || v == Integer.MIN_VALUE ? null : v;
    }

    private void sampleOnce(BatteryManager bm) {
        Energy.Sample s = new Energy.Sample((SystemClock.elapsedRealtimeNanos() - t0) / 1e9, phase);
        s.currentNow = prop(bm, BatteryManager.BATTERY_PROPERTY_CURRENT_NOW);
        s.chargeCounter = prop(bm, BatteryManager.BATTERY_PROPERTY_CHARGE_COUNTER);
        s.capacity = prop(bm, BatteryManager.BATTERY_PROPERTY_CAPACITY);
        Intent b = batteryIntent();
        if (b != null) {
            int mv = b.getIntExtra(BatteryManager.EXTRA_VOLTAGE, -1);
            int temp = b.getIntExtra(BatteryManager.EXTRA_TEMPERATURE, Integer.MIN_VALUE);
            if (mv > 0) s.voltageNow = (long) mv;  // mV: the shared unit inference reads >= 100 as mV
            if (temp != Integer.MIN_VALUE) s.batteryTemp = (long) temp;  // 0.1 °C
            if (b.getIntExtra(BatteryManager.EXTRA_PLUGGED, 0) != 0) pluggedSeen = true;
        }
        synchronized (samples) {
            samples.add(s);
        }
    }

    static String batteryStatus(Intent b) {
        if (b == null) return "";
        switch (b.getIntExtra(BatteryManager.EXTRA_STATUS, -1)) {
            case BatteryManager.BATTERY_STATUS_DISCHARGING: return "Discharging";
            case BatteryManager.BATTERY_STATUS_CHARGING: return "Charging";
            case BatteryManager.BATTERY_STATUS_FULL: return "Full";
            case BatteryManager.BATTERY_STATUS_NOT_CHARGING: return "Not charging";
            default: return "Unknown";
        }
    }

    /** PowerManager.getCurrentThermalStatus() (API 29) by reflection; null below 29 or when it fails. */
    Integer thermalStatus() {
        if (Build.VERSION.SDK_INT < 29) return null;
        try {
            PowerManager pm = (PowerManager) context.getSystemService(Context.POWER_SERVICE);
            Method m = PowerManager.class.getMethod("getCurrentThermalStatus");
            return (Integer) m.invoke(pm);
        } catch (Exception e) {
            return null;
        }
    }

    private boolean waitThermalNone(Settings s, Progress p) throws InterruptedException {
        long start = SystemClock.elapsedRealtime();
        while (true) {
            Integer st = thermalStatus();
            if (st == null || st == 0) return true;  // THERMAL_STATUS_NONE
            if (SystemClock.elapsedRealtime() - start > s.thermalTimeoutMs) return false;
            p.onStatus("waiting for the thermal status to return to none (now " + st + ")");
            Thread.sleep(2000);
        }
    }

    /** Text tokens after the image in the image rows (runtime/bench.py IMAGE_PROMPT_TEXT_TOKENS). */
    static final int IMAGE_PROMPT_TEXT_TOKENS = 16;

    /**
     * The report's {@code images} rows, as runtime/bench.py measures them: per image size, the test card before 16
     * random text tokens, one greedy token; the runner's encode time and the whole prompt's time to first token.
     */
    private void imageRows(RunnerProcess runner, Bundle.Vision vision, Settings s, Set<Integer> avoid,
                           BenchReport report, Progress p) throws Exception {
        Set<Integer> textAvoid = new HashSet<Integer>(avoid);
        textAvoid.add(vision.imageTokenId);
        textAvoid.add(vision.visionStartTokenId);
        textAvoid.add(vision.visionEndTokenId);
        int[] text = BenchReport.randomPrompt(runner.ready.vocabSize, IMAGE_PROMPT_TEXT_TOKENS, s.seed, textAvoid);
        int[] prompt = new int[text.length + 3];
        prompt[0] = vision.visionStartTokenId;
        prompt[1] = vision.imageTokenId;
        prompt[2] = vision.visionEndTokenId;
        System.arraycopy(text, 0, prompt, 3, text.length);
        for (ImageInput.Size size : vision.sizes) {
            ImageInput card = ImageInput.testCard(size.height, size.width);
            BenchReport.ImageRow row = new BenchReport.ImageRow(size, prompt.length - 1 + size.tokens);
            for (int k = 0; k < s.warmup + s.runs; k++) {
                p.onStatus("image " + size + (k < s.warmup ? ", warmup " + (k + 1) : ", run " + (k - s.warmup + 1)));
                ServeProtocol.Done d = runner.client.generate(prompt, card, 1, ServeProtocol.Sampling.greedy(), false,
                        false, null);
                if (k < s.warmup) continue;
                row.encodeMs.add(d.imageEncodeMs);
                row.ttftMs.add(d.ttftMs);
            }
            report.images.add(row);
        }
    }

    File run(File bundleDir, Settings s, Progress p) throws Exception {
        p.onStatus("checking " + bundleDir.getName());
        Bundle b = Bundle.open(bundleDir, AppFiles.manifestSchema(context), AppFiles.hashCache(context));
        if (b.isAppleOnly()) throw new IllegalArgumentException(bundleDir + ": a Core ML bundle runs only in the iOS app");
        BenchReport report = new BenchReport(BuildInfo.versionName(context), "qwen-bench --serve (glibc aarch64 runner,"
                + " ExecuTorch 1.5.1 XNNPACK)");
        report.device.put("model", Build.MANUFACTURER + " " + Build.MODEL);
        report.device.put("os", "Android " + Build.VERSION.RELEASE + " (API " + Build.VERSION.SDK_INT + ")");
        report.device.put("arch", Build.SUPPORTED_ABIS.length > 0 ? Build.SUPPORTED_ABIS[0] : "unknown");
        report.device.put("cpu", Build.HARDWARE);
        report.device.put("cores", (long) Runtime.getRuntime().availableProcessors());
        report.device.put("ram_bytes", null);
        report.device.put("emulated", false);
        report.setBundle(b, bundleDir.getPath());
        report.setSettings(s.promptLengths, s.generate, s.runs, s.warmup, null, s.seed);

        p.onStatus("starting the runner");
        RunnerProcess runner = new RunnerProcess(context, bundleDir, null);
        final BatteryManager bm = (BatteryManager) context.getSystemService(Context.BATTERY_SERVICE);
        String status = batteryStatus(batteryIntent());
        t0 = SystemClock.elapsedRealtimeNanos();
        ScheduledExecutorService sampler = Executors.newSingleThreadScheduledExecutor();
        // Fixed-rate scheduling keeps the period from drifting with the time each read takes.
        sampler.scheduleAtFixedRate(new Runnable() {
            @Override
            public void run() {
                sampleOnce(bm);
            }
        }, 0, Math.round(1e6 / s.sampleHz), TimeUnit.MICROSECONDS);
        long tokens = 0;
        double runWallS = 0;
        try {
            phase = "idle";
            p.onStatus(String.format(java.util.Locale.ROOT, "idle baseline, %.0f s", s.idleSeconds));
            Thread.sleep(Math.round(s.idleSeconds * 1000));
            Set<Integer> avoid = new HashSet<Integer>();
            for (int id : runner.ready.stopIds) avoid.add(id);
            int runIndex = 0;
            for (int len : s.promptLengths) {
                if (len + s.generate > runner.ready.maxSeqLen) {
                    throw new IllegalArgumentException("prompt length " + len + " + " + s.generate + " tokens exceed the"
                            + " bundle's context " + runner.ready.maxSeqLen);
                }
                int[] prompt = BenchReport.randomPrompt(runner.ready.vocabSize, len, s.seed, avoid);
                for (int k = 0; k < s.warmup + s.runs; k++) {
                    boolean measured = k >= s.warmup;
                    phase = "warmup";  // cool-down waits and warmups are outside both baseline and runs
                    if (measured && !waitThermalNone(s, p)) {
                        report.notes.add("run " + runIndex + " started before the thermal status returned to none"
                                + " (timeout)");
                    }
                    p.onStatus((measured ? "run " + (k - s.warmup + 1) + "/" + s.runs : "warmup " + (k + 1)) + ", prompt "
                            + len);
                    final List<Double> stepMs = new ArrayList<Double>();
                    if (measured) phase = "run";
                    long w0 = SystemClock.elapsedRealtimeNanos();
                    ServeProtocol.Done d = runner.client.generate(prompt, s.generate, ServeProtocol.Sampling.greedy(),
                            false, false, new org.qwenmobile.core.ServeClient.TokenListener() {
                                @Override
                                public void onToken(int token, int index, double ms) {
                                    if (index > 0) stepMs.add(ms);
                                }
                            });
                    long w1 = SystemClock.elapsedRealtimeNanos();
                    phase = "warmup";
                    if (!measured) continue;
                    runWallS += (w1 - w0) / 1e9;
                    tokens += d.tokens.length;
                    report.add(new BenchReport.Run(len, d.tokens.length, d.ttftMs, d.prefillTokS, d.decodeTokS, stepMs));
                    LinkedHashMap<String, Object> point = new LinkedHashMap<String, Object>();
                    point.put("run", (long) runIndex++);
                    point.put("prompt_tokens", (long) len);
                    point.put("decode_tok_s", d.decodeTokS);
                    point.put("ttft_ms", d.ttftMs);
                    Intent bi = batteryIntent();
                    int temp = bi == null ? Integer.MIN_VALUE : bi.getIntExtra(BatteryManager.EXTRA_TEMPERATURE,
                            Integer.MIN_VALUE);
                    point.put("battery_temp_c", temp == Integer.MIN_VALUE ? null : (Object) (temp / 10.0));
                    Integer th = thermalStatus();
                    point.put("thermal_status", th == null ? null : (Object) (long) (int) th);
                    report.perRun.add(point);
                    p.onRun(point);
                }
            }
            phase = "warmup";  // outside the energy window: not part of the measured token runs
            Bundle.Vision vision = b.vision();
            if (vision != null && s.imageRows) imageRows(runner, vision, s, avoid, report, p);
            if (vision != null && !s.imageRows) report.notes.add("images rows skipped (images=false)");
        } finally {
            sampler.shutdown();
            sampler.awaitTermination(2, TimeUnit.SECONDS);
            runner.stop();
        }
        Energy.Trace trace = new Energy.Trace();
        trace.source = "BatteryManager (CURRENT_NOW, CHARGE_COUNTER, CAPACITY) + ACTION_BATTERY_CHANGED";
        trace.sampleHz = s.sampleHz;
        trace.status = status;
        trace.tokens = tokens;
        trace.runWallS = runWallS;
        synchronized (samples) {
            trace.samples.addAll(samples);
        }
        Map<String, Object> energy = Energy.summarize(trace, Energy.CurrentUnit.AUTO);
        Energy.markValidity(energy, pluggedSeen);
        report.energy = energy;
        if (!Boolean.TRUE.equals(energy.get("valid"))) {
            report.notes.add("energy is not valid: " + energy.get("invalid_reasons"));
        }
        File out = new File(AppFiles.resultsDir(context), "bench-" + bundleDir.getName() + "-"
                + BenchReport.utc(report.createdMs).replace(":", "") + ".json");
        Files.writeUtf8Atomically(out, Json.writePretty(report.toJson()));
        p.onStatus("wrote " + out);
        return out;
    }
}
