package org.qwenmobile.core;

import java.io.File;
import java.io.IOException;
import java.util.Map;

/** Locates the repository (the shared vectors and traces live outside android_app/). */
final class TestFiles {
    private TestFiles() {}

    static File repo() {
        String prop = System.getProperty("qwen.repo");
        File dir = new File(prop != null ? prop : ".").getAbsoluteFile();
        for (File d = dir; d != null; d = d.getParentFile()) {
            if (new File(d, "tests/apps/vectors").isDirectory()) return d;
        }
        throw new IllegalStateException("cannot find the repository from " + dir + " (set -Dqwen.repo=...)");
    }

    static File file(String rel) {
        return new File(repo(), rel);
    }

    static Map<String, Object> json(String rel) throws IOException, Json.ParseException {
        return Json.parseObject(Files.readUtf8(file(rel)));
    }
}
