package org.qwenmobile.core;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TimeZone;

/**
 * A benchmark result in the bench schema (runtime/schemas/bench.schema.json, producer "android-app"), built from the
 * runner's per-run done lines; the same method as runtime/bench.py: per prompt length, unmeasured warmups, then
 * measured runs that each start a fresh sequence and generate exactly N tokens (stop ids ignored).
 */
public final class BenchReport {
    public static final String PRODUCER = "android-app";

    /** One measured run. */
    public static final class Run {
        public final int promptTokens;
        public final int generatedTokens;
        public final double ttftMs;
        public final double prefillTokS;
        public final Double decodeTokS;
        public final List<Double> decodeMsPerToken;

        public Run(int promptTokens, int generatedTokens, double ttftMs, double prefillTokS, Double decodeTokS,
                   List<Double> decodeMsPerToken) {
            this.promptTokens = promptTokens;
            this.generatedTokens = generatedTokens;
            this.ttftMs = ttftMs;
            this.prefillTokS = prefillTokS;
            this.decodeTokS = decodeTokS;
            this.decodeMsPerToken = decodeMsPerToken;
        }
    }

    public final LinkedHashMap<String, Object> producer = new LinkedHashMap<String, Object>();
    public final LinkedHashMap<String, Object> device = new LinkedHashMap<String, Object>();
    public final LinkedHashMap<String, Object> bundle = new LinkedHashMap<String, Object>();
    public final LinkedHashMap<String, Object> settings = new LinkedHashMap<String, Object>();
    public final LinkedHashMap<Integer, List<Run>> runs = new LinkedHashMap<Integer, List<Run>>();
    public Map<String, Object> energy;
    public Map<String, Object> memory;
    public final List<Object> notes = new ArrayList<Object>();
    public final List<Object> perRun = new ArrayList<Object>();  // chart data: tok/s and temperature per run
    /** The schema's {@code images} rows (bundles with a vision section): per size, measured encode and TTFT. */
    public final List<ImageRow> images = new ArrayList<ImageRow>();

    /** One image size's measured runs: the test card before a short text prompt, greedy to the first token. */
    public static final class ImageRow {
        public final ImageInput.Size size;
        public final int promptTokens;  // the whole prompt, the image's tokens included
        public final List<Double> encodeMs = new ArrayList<Double>();
        public final List<Double> ttftMs = new ArrayList<Double>();

        public ImageRow(ImageInput.Size size, int promptTokens) {
            this.size = size;
            this.promptTokens = promptTokens;
        }
    }
    public long createdMs = System.currentTimeMillis();

    public BenchReport(String appVersion, String runtime) {
        producer.put("name", PRODUCER);
        producer.put("version", appVersion);
        producer.put("runtime", runtime);
    }

    public void setBundle(Bundle b, String path) {
        bundle.put("hash", b.bundleHash());
        bundle.put("path", path);
        bundle.put("model_id", b.modelId());
        bundle.put("model_size", b.modelSize());
        bundle.put("params", b.params());
        bundle.put("backend", b.backend());
        bundle.put("recipe", b.preset() != null ? b.preset() : b.recipeName());
        bundle.put("qlinear", b.qlinear());
        bundle.put("qembedding", b.qembedding());
        bundle.put("group_size", b.groupSize());
        bundle.put("bytes", b.totalBytes());
    }

    public void setSettings(int[] promptLengths, int generateTokens, int runCount, int warmup, Integer threads,
                            long seed) {
        settings.put("prompt_lengths", Json.list(promptLengths));
        settings.put("generate_tokens", (long) generateTokens);
        settings.put("runs", (long) runCount);
        settings.put("warmup", (long) warmup);
        settings.put("threads", threads == null ? null : (Object) (long) (int) threads);
        settings.put("prefill_chunk", null);
        settings.put("prompt_source", "random ids, seed " + seed + " + length (java.util.Random)");
    }

    public void add(Run r) {
        List<Run> l = runs.get(r.promptTokens);
        if (l == null) runs.put(r.promptTokens, l = new ArrayList<Run>());
        l.add(r);
    }

    public static String utc(long ms) {
        java.text.SimpleDateFormat f = new java.text.SimpleDateFormat("yyyy-MM-dd'T'HH:mm:ss'Z'", java.util.Locale.ROOT);
        f.setTimeZone(TimeZone.getTimeZone("UTC"));
        return f.format(new java.util.Date(ms));
    }

    public LinkedHashMap<String, Object> toJson() {
        if (runs.isEmpty()) throw new IllegalStateException("no measured runs");
        LinkedHashMap<String, Object> doc = new LinkedHashMap<String, Object>();
        doc.put("schema_version", 1L);
        doc.put("format", "qwen-mobile-bench");
        doc.put("producer", producer);
        doc.put("created_utc", utc(createdMs));
        doc.put("device", device);
        doc.put("bundle", bundle);
        doc.put("settings", settings);
        List<Object> results = new ArrayList<Object>();
        for (Map.Entry<Integer, List<Run>> e : runs.entrySet()) {
            List<Double> ttft = new ArrayList<Double>();
            List<Double> prefill = new ArrayList<Double>();
            List<Double> decode = new ArrayList<Double>();
            List<Object> samples = new ArrayList<Object>();
            int gen = 0;
            for (Run r : e.getValue()) {
                ttft.add(r.ttftMs);
                prefill.add(r.prefillTokS);
                if (r.decodeTokS != null) decode.add(r.decodeTokS);
                gen = Math.max(gen, r.generatedTokens);
                LinkedHashMap<String, Object> s = new LinkedHashMap<String, Object>();
                s.put("ttft_ms", r.ttftMs);
                s.put("prefill_tok_s", r.prefillTokS);
                s.put("decode_tok_s", r.decodeTokS);
                s.put("generated_tokens", (long) r.generatedTokens);
                s.put("decode_ms_per_token", new ArrayList<Object>(r.decodeMsPerToken));
                samples.add(s);
            }
            LinkedHashMap<String, Object> res = new LinkedHashMap<String, Object>();
            res.put("prompt_tokens", (long) e.getKey());
            res.put("generate_tokens", (long) gen);
            res.put("ttft_ms", Stats.of(ttft));
            res.put("prefill_tok_s", Stats.of(prefill));
            // Every run has a decode rate or none does (one-token runs): a partial list would skew the stats.
            res.put("decode_tok_s", decode.size() == e.getValue().size() ? Stats.of(decode) : null);
            res.put("samples", samples);
            results.add(res);
        }
        doc.put("results", results);
        if (!images.isEmpty()) {
            List<Object> rows = new ArrayList<Object>();
            for (ImageRow row : images) {
                LinkedHashMap<String, Object> m = new LinkedHashMap<String, Object>();
                m.put("height", (long) row.size.height);
                m.put("width", (long) row.size.width);
                m.put("method", row.size.method);
                m.put("tokens", (long) row.size.tokens);
                m.put("prompt_tokens", (long) row.promptTokens);
                m.put("encode_ms", Stats.of(row.encodeMs));
                m.put("ttft_ms", Stats.of(row.ttftMs));
                rows.add(m);
            }
            doc.put("images", rows);
        }
        doc.put("memory", memory);
        doc.put("energy", energy);
        doc.put("notes", notes);
        LinkedHashMap<String, Object> extra = new LinkedHashMap<String, Object>();
        extra.put("per_run", perRun);
        doc.put("android", extra);
        return doc;
    }

    /** Random prompt ids for a length: seeded by seed + length (like bench.py), never a stop or special id. */
    public static int[] randomPrompt(int vocabSize, int length, long seed, java.util.Set<Integer> avoid) {
        Random r = new Random(seed + length);
        int[] ids = new int[length];
        for (int i = 0; i < length; i++) {
            int id;
            do {
                id = r.nextInt(vocabSize);
            } while (avoid.contains(id));
            ids[i] = id;
        }
        return ids;
    }
}
