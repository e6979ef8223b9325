package org.qwenmobile.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.FileOutputStream;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

/** Manifest validation against Python's jsonschema verdicts (shared vectors) and the file checks of bundle.py. */
public class ManifestTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    static JsonSchema schema() throws Exception {
        return new JsonSchema(TestFiles.json("runtime/schemas/manifest.schema.json"));
    }

    @Test
    public void sameVerdictAndFieldAsJsonschema() throws Exception {
        JsonSchema schema = schema();
        List<Object> cases = Json.arr(TestFiles.json("tests/apps/vectors/manifest_cases.json").get("cases"), "cases");
        assertTrue(cases.size() > 25);
        StringBuilder failures = new StringBuilder();
        for (Object c : cases) {
            Map<String, Object> k = Json.obj(c, "case");
            JsonSchema.Error err = schema.validate(k.get("manifest"));
            boolean valid = (Boolean) k.get("valid");
            if (valid != (err == null)) {
                failures.append(k.get("name")).append(": jsonschema says ").append(valid ? "valid" : "invalid")
                        .append(", Java says ").append(err).append('\n');
            } else if (!valid && !err.path.equals(k.get("field"))) {
                failures.append(k.get("name")).append(": field ").append(err.path).append(", jsonschema ")
                        .append(k.get("field")).append('\n');
            }
        }
        if (failures.length() > 0) fail(failures.toString());
    }

    private File writeBundle(Map<String, Object> manifest, Map<String, byte[]> files) throws Exception {
        File dir = tmp.newFolder();
        Map<String, Object> entries = new LinkedHashMap<String, Object>();
        for (Map.Entry<String, byte[]> f : files.entrySet()) {
            FileOutputStream out = new FileOutputStream(new File(dir, f.getKey()));
            out.write(f.getValue());
            out.close();
            Map<String, Object> e = new LinkedHashMap<String, Object>();
            // The JDK's digest, not the code under test, gives the expected hash.
            e.put("sha256", Files.hex(java.security.MessageDigest.getInstance("SHA-256").digest(f.getValue())));
            e.put("bytes", (long) f.getValue().length);
            entries.put(f.getKey(), e);
        }
        manifest.put("files", entries);
        Files.writeUtf8Atomically(new File(dir, Bundle.MANIFEST), Json.writePretty(manifest));
        return dir;
    }

    private Map<String, Object> goodManifest() throws Exception {
        List<Object> cases = Json.arr(TestFiles.json("tests/apps/vectors/manifest_cases.json").get("cases"), "cases");
        Map<String, Object> good = Json.obj(Json.obj(cases.get(0), "c").get("manifest"), "m");
        assertEquals("good", Json.obj(cases.get(0), "c").get("name"));
        return good;
    }

    private static Map<String, byte[]> payload() throws Exception {
        Map<String, byte[]> files = new LinkedHashMap<String, byte[]>();
        files.put("model.pte", "not really a program".getBytes("UTF-8"));
        files.put("tokenizer.json", "{}".getBytes("UTF-8"));
        return files;
    }

    @Test
    public void goodBundleOpensAndHashesOnce() throws Exception {
        File dir = writeBundle(goodManifest(), payload());
        File store = new File(tmp.getRoot(), "hashes.json");
        HashCache cache = new HashCache(store);
        Bundle b = Bundle.open(dir, schema(), cache);
        assertEquals(2, cache.hashed);
        assertEquals("nano", b.modelId());
        assertEquals("8da4w", b.qlinear());
        assertEquals(512, b.maxSeqLen());
        assertFalse(b.isAppleOnly());
        assertEquals(Boolean.FALSE, b.thinkingDefault());
        assertEquals(8168, b.stopIds()[0]);
        // A new process reads the stored hashes instead of re-reading the files.
        HashCache again = new HashCache(store);
        Bundle.open(dir, schema(), again);
        assertEquals(0, again.hashed);
    }

    @Test
    public void bundleHashIsBundlePysDefinition() throws Exception {
        File dir = writeBundle(goodManifest(), payload());
        Bundle b = Bundle.open(dir, schema(), null);
        // bundle_hash = sha256("model.pte:<h>;tokenizer.json:<h>;") with names sorted.
        Map<String, Object> f = b.files();
        String joined = "model.pte:" + Json.obj(f.get("model.pte"), "").get("sha256") + ";tokenizer.json:"
                + Json.obj(f.get("tokenizer.json"), "").get("sha256") + ";";
        assertEquals(Files.hex(java.security.MessageDigest.getInstance("SHA-256").digest(joined.getBytes("UTF-8"))),
                b.bundleHash());
    }

    @Test
    public void modifiedFileIsCaught() throws Exception {
        File dir = writeBundle(goodManifest(), payload());
        File store = new File(tmp.getRoot(), "hashes.json");
        Bundle.open(dir, schema(), new HashCache(store));
        File model = new File(dir, "model.pte");
        long mtime = model.lastModified();
        FileOutputStream out = new FileOutputStream(model);
        out.write("not really a progrAm".getBytes("UTF-8"));  // same size
        out.close();
        assertTrue(model.setLastModified(mtime + 2000));
        try {
            Bundle.open(dir, schema(), new HashCache(store));
            fail("a modified file passed");
        } catch (Bundle.BundleException e) {
            assertEquals(model + ": sha256 does not match the manifest (modified or corrupt)", e.getMessage());
        }
    }

    @Test
    public void missingFileAndEscapingPathAreNamed() throws Exception {
        File dir = writeBundle(goodManifest(), payload());
        assertTrue(new File(dir, "tokenizer.json").delete());
        try {
            Bundle.open(dir, schema(), new HashCache(null));
            fail("missing file passed");
        } catch (Bundle.BundleException e) {
            assertEquals(dir + ": file 'tokenizer.json' listed in the manifest is missing", e.getMessage());
        }
        Map<String, Object> m = goodManifest();
        File dir2 = writeBundle(m, payload());
        Map<String, Object> manifest = Json.parseObject(Files.readUtf8(new File(dir2, Bundle.MANIFEST)));
        Map<String, Object> files = Json.obj(manifest.get("files"), "files");
        files.put("../outside.bin", files.get("model.pte"));
        Files.writeUtf8Atomically(new File(dir2, Bundle.MANIFEST), Json.write(manifest));
        try {
            Bundle.open(dir2, schema(), new HashCache(null));
            fail("escaping path passed");
        } catch (Bundle.BundleException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("'../outside.bin' in the manifest points outside"));
        }
    }

    @Test
    public void badFieldAndOldVersionAreNamed() throws Exception {
        Map<String, Object> m = goodManifest();
        Json.obj(m.get("recipe"), "recipe").put("qlinear", "3w");
        try {
            Bundle.fromManifest(new File("."), m, schema(), "b/manifest.json");
            fail();
        } catch (Bundle.BundleException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("b/manifest.json: field 'recipe/qlinear': \"3w\" is not one of"));
        }
        m = goodManifest();
        m.put("schema_version", 1L);
        try {
            Bundle.fromManifest(new File("."), m, schema(), "b/manifest.json");
            fail();
        } catch (Bundle.BundleException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("schema_version 1, this app reads version 2"));
        }
        try {
            Bundle.open(tmp.newFolder("empty"), schema(), null);
            fail();
        } catch (Bundle.BundleException e) {
            assertTrue(e.getMessage().endsWith("no manifest.json; not a qwen-mobile bundle"));
        }
    }

    @Test
    public void coreMlIsAppleOnly() throws Exception {
        List<Object> cases = Json.arr(TestFiles.json("tests/apps/vectors/manifest_cases.json").get("cases"), "cases");
        Map<String, Object> coreml = Json.obj(Json.obj(cases.get(1), "c").get("manifest"), "m");
        Bundle b = Bundle.fromManifest(new File("."), coreml, schema(), "x");
        assertTrue(b.isAppleOnly());
        assertTrue(b.summary().endsWith("iOS only"));
    }

    @Test
    public void unsupportedSchemaKeywordFailsLoudly() throws Exception {
        Map<String, Object> s = TestFiles.json("runtime/schemas/manifest.schema.json");
        s.put("patternProperties", new LinkedHashMap<String, Object>());
        try {
            new JsonSchema(s);
            fail();
        } catch (IllegalArgumentException e) {
            assertEquals("schema #: keyword 'patternProperties' is not supported", e.getMessage());
        }
        assertNotNull(schema());
        assertNull(schema().validate(goodManifest()));
    }
}
