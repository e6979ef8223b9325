package org.qwenmobile.core;

import java.io.File;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * A bundle folder as runtime/bundle.py defines it: manifest.json validated against manifest.schema.json, every listed
 * file present with its size and sha256. Hashes are cached by size and modification time ({@link HashCache}), so a
 * 400 MB model is hashed once, not at every start.
 */
public final class Bundle {
    public static final String MANIFEST = "manifest.json";
    public static final int SCHEMA_VERSION = 2;

    public final File folder;
    public final Map<String, Object> manifest;

    /** A bundle that is incomplete, tampered with or does not match the manifest schema; the message names why. */
    public static final class BundleException extends Exception {
        public BundleException(String message) {
            super(message);
        }
    }

    private Bundle(File folder, Map<String, Object> manifest) {
        this.folder = folder;
        this.manifest = manifest;
    }

    /** Reads and validates the manifest; with a cache, also checks every listed file (null cache: schema only). */
    public static Bundle open(File folder, JsonSchema schema, HashCache cache) throws BundleException, IOException {
        File path = new File(folder, MANIFEST);
        if (!path.isFile()) throw new BundleException(folder + ": no " + MANIFEST + "; not a qwen-mobile bundle");
        Map<String, Object> m;
        try {
            m = Json.parseObject(Files.readUtf8(path));
        } catch (Json.ParseException e) {
            throw new BundleException(path + ": not valid JSON (" + e.getMessage() + ")");
        }
        Bundle b = fromManifest(folder, m, schema, path.getPath());
        if (cache != null) b.verifyFiles(cache);
        return b;
    }

    public static Bundle fromManifest(File folder, Map<String, Object> m, JsonSchema schema, String source)
            throws BundleException {
        Object version = m.get("schema_version");
        if (version instanceof Long && (Long) version != SCHEMA_VERSION) {
            // Said before the field-by-field complaints: a version-1 program has no decode_token method.
            throw new BundleException(source + ": manifest schema_version " + version + ", this app reads version "
                    + SCHEMA_VERSION + "; re-export the bundle with this version");
        }
        JsonSchema.Error err = schema.validate(m);
        if (err != null) throw new BundleException(source + ": " + err);
        return new Bundle(folder, m);
    }

    public void verifyFiles(HashCache cache) throws BundleException, IOException {
        for (Map.Entry<String, Object> e : files().entrySet()) {
            String name = e.getKey();
            if (name.startsWith("/") || ("/" + name + "/").contains("/../")) {
                throw new BundleException(folder + ": file '" + name + "' in the manifest points outside the bundle");
            }
            File f = new File(folder, name);
            if (!f.isFile()) throw new BundleException(folder + ": file '" + name + "' listed in the manifest is missing");
            Map<String, Object> entry = Json.obj(e.getValue(), "files/" + name);
            long bytes = Json.integer(entry.get("bytes"), "files/" + name + "/bytes");
            if (f.length() != bytes || !cache.sha256(f).equals(entry.get("sha256"))) {
                throw new BundleException(f + ": sha256 does not match the manifest (modified or corrupt)");
            }
        }
        cache.save();
    }

    private Map<String, Object> section(String key) {
        return Json.obj(manifest.get(key), key);
    }

    public Map<String, Object> files() {
        return section("files");
    }

    public String modelId() {
        return (String) section("model").get("id");
    }

    public String modelSize() {
        Object s = section("model").get("size");
        return s instanceof String ? (String) s : null;
    }

    public long params() {
        return Json.integer(section("model").get("params"), "model/params");
    }

    public String recipeName() {
        return (String) section("recipe").get("name");
    }

    public String backend() {
        return (String) section("recipe").get("backend");
    }

    public String preset() {
        Object p = section("recipe").get("preset");
        return p instanceof String ? (String) p : null;
    }

    public String qlinear() {
        return (String) section("recipe").get("qlinear");
    }

    public String qembedding() {
        return (String) section("recipe").get("qembedding");
    }

    public long groupSize() {
        return Json.integer(section("recipe").get("group_size"), "recipe/group_size");
    }

    public int maxSeqLen() {
        return (int) Json.integer(section("state").get("max_seq_len"), "state/max_seq_len");
    }

    public int[] stopIds() {
        return Json.intArray(section("tokenizer").get("stop_ids"), "tokenizer/stop_ids");
    }

    /** The manifest's thinking default; null when the export could not tell (the app then starts with it off). */
    public Boolean thinkingDefault() {
        Object t = section("tokenizer").get("thinking_default");
        return t instanceof Boolean ? (Boolean) t : null;
    }

    public File tokenizerFile() {
        Object f = section("tokenizer").get("file");
        return f instanceof String ? new File(folder, (String) f) : null;
    }

    /** The manifest's {@code vision} section (runtime/CONTRACT.md, "Images"); null for a bundle that takes no images. */
    public Vision vision() {
        Object v = manifest.get("vision");
        return v == null ? null : new Vision(Json.obj(v, "vision"));
    }

    /** What a reader needs of {@code vision}: the image span's ids and the sizes the program encodes. */
    public static final class Vision {
        public final int imageTokenId;
        public final int visionStartTokenId;
        public final int visionEndTokenId;
        public final java.util.List<ImageInput.Size> sizes;

        Vision(Map<String, Object> v) {
            imageTokenId = (int) Json.integer(v.get("image_token_id"), "vision/image_token_id");
            visionStartTokenId = (int) Json.integer(v.get("vision_start_token_id"), "vision/vision_start_token_id");
            visionEndTokenId = (int) Json.integer(v.get("vision_end_token_id"), "vision/vision_end_token_id");
            List<ImageInput.Size> out = new ArrayList<ImageInput.Size>();
            List<Object> images = Json.arr(v.get("images"), "vision/images");
            for (int i = 0; i < images.size(); i++) {
                String f = "vision/images[" + i + "]";
                Map<String, Object> e = Json.obj(images.get(i), f);
                out.add(new ImageInput.Size((int) Json.integer(e.get("height"), f + "/height"),
                        (int) Json.integer(e.get("width"), f + "/width"), (int) Json.integer(e.get("tokens"), f + "/tokens"),
                        Json.str(e.get("method"), f + "/method")));
            }
            sizes = java.util.Collections.unmodifiableList(out);
        }

        /** The size an image of height x width pixels is scaled to (the contract's rule). */
        public ImageInput.Size sizeFor(int height, int width) {
            return ImageInput.choose(height, width, sizes);
        }
    }

    /** Core ML bundles (an .mlpackage, or a .pte whose graph is one Core ML delegate) run only on Apple devices. */
    public boolean isAppleOnly() {
        String r = recipeName();
        return "coreml".equals(r) || "coreml-pte".equals(r);
    }

    public long totalBytes() {
        long n = 0;
        for (Object e : files().values()) n += Json.integer(Json.obj(e, "files").get("bytes"), "bytes");
        return n;
    }

    /** runtime/bundle.py bundle_hash: sha256 over "name:sha256;" of every file in name order. */
    public String bundleHash() {
        StringBuilder joined = new StringBuilder();
        for (Map.Entry<String, Object> e : new TreeMap<String, Object>(files()).entrySet()) {
            joined.append(e.getKey()).append(':').append(Json.obj(e.getValue(), "files").get("sha256")).append(';');
        }
        try {
            return Files.sha256(joined.toString().getBytes("UTF-8"));
        } catch (java.io.UnsupportedEncodingException e) {
            throw new IllegalStateException(e);
        }
    }

    /** One line for the bundle list: model, backend, quantization and context. */
    public String summary() {
        String q = qlinear() + ("none".equals(qembedding()) ? "" : ", embedding " + qembedding());
        return modelId() + (modelSize() != null ? " (" + modelSize() + ")" : "") + " · " + backend() + " · " + q
                + " · context " + maxSeqLen() + (isAppleOnly() ? " · iOS only" : "");
    }

    /** Bundle folders directly under root (one level), sorted by name; not-yet-valid ones are still listed. */
    public static List<File> candidates(File root) {
        List<File> out = new ArrayList<File>();
        File[] kids = root.listFiles();
        if (kids == null) return out;
        java.util.Arrays.sort(kids);
        for (File k : kids) if (k.isDirectory() && !k.getName().startsWith(".")) out.add(k);
        return out;
    }
}
