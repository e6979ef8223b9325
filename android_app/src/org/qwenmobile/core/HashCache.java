package org.qwenmobile.core;

import java.io.File;
import java.io.IOException;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * sha256 of files, remembered by absolute path, size and modification time in a small JSON file, so a bundle is
 * hashed once after it is pushed and not at every app start. A file rewritten in place with the same size and time
 * would escape it; `adb push` sets a new time, and the runner's own --verify re-hashes when in doubt.
 */
public final class HashCache {
    private final File store;
    private final Map<String, Object> entries;
    private boolean dirty;
    public int hashed;  // files actually read since construction (what the tests and the UI's progress look at)

    public HashCache(File store) {
        this.store = store;
        Map<String, Object> loaded = null;
        if (store != null && store.isFile()) {
            try {
                loaded = Json.parseObject(Files.readUtf8(store));
            } catch (Exception corrupt) {
                loaded = null;  // a damaged cache only costs re-hashing
            }
        }
        entries = loaded != null ? loaded : new LinkedHashMap<String, Object>();
    }

    public synchronized String sha256(File f) throws IOException {
        String key = f.getAbsolutePath();
        Object e = entries.get(key);
        if (e instanceof Map) {
            Map<?, ?> m = (Map<?, ?>) e;
            Object bytes = m.get("bytes");
            Object mtime = m.get("mtime_ms");
            if (bytes instanceof Long && mtime instanceof Long && (Long) bytes == f.length()
                    && (Long) mtime == f.lastModified() && m.get("sha256") instanceof String) {
                return (String) m.get("sha256");
            }
        }
        String h = Files.sha256(f);
        hashed++;
        Map<String, Object> m = new LinkedHashMap<String, Object>();
        m.put("bytes", f.length());
        m.put("mtime_ms", f.lastModified());
        m.put("sha256", h);
        entries.put(key, m);
        dirty = true;
        return h;
    }

    public synchronized void save() throws IOException {
        if (!dirty || store == null) return;
        Files.writeUtf8Atomically(store, Json.writePretty(entries));
        dirty = false;
    }
}
