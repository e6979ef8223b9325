package org.qwenmobile.app;

import android.content.Context;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.util.Map;
import org.qwenmobile.core.HashCache;
import org.qwenmobile.core.Json;
import org.qwenmobile.core.JsonSchema;

/** Where the app keeps things: bundles and results in the external files dir (reachable by adb), caches inside. */
final class AppFiles {
    private AppFiles() {}

    static File bundlesDir(Context c) {
        File d = new File(c.getExternalFilesDir(null), "bundles");
        d.mkdirs();
        return d;
    }

    static File resultsDir(Context c) {
        File d = new File(c.getExternalFilesDir(null), "results");
        d.mkdirs();
        return d;
    }

    static File snapshotsDir(Context c) {
        File d = new File(c.getFilesDir(), "snapshots");
        d.mkdirs();
        return d;
    }

    static HashCache hashCache(Context c) {
        return new HashCache(new File(c.getFilesDir(), "sha256-cache.json"));
    }

    private static JsonSchema schema;

    /** runtime/schemas/manifest.schema.json, packaged as an asset by build_apk.sh. */
    static synchronized JsonSchema manifestSchema(Context c) throws IOException {
        if (schema == null) {
            InputStream in = c.getAssets().open("manifest.schema.json");
            try {
                java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
                byte[] buf = new byte[8192];
                int n;
                while ((n = in.read(buf)) > 0) out.write(buf, 0, n);
                Map<String, Object> m = Json.parseObject(new String(out.toByteArray(), "UTF-8"));
                schema = new JsonSchema(m);
            } catch (Json.ParseException e) {
                throw new IOException("asset manifest.schema.json: " + e.getMessage());
            } finally {
                in.close();
            }
        }
        return schema;
    }
}
