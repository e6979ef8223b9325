package org.qwenmobile.core;

import java.io.File;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * How the app starts the packaged runner: through the glibc loader shipped as a lib*.so in nativeLibraryDir (the
 * package installer extracts only lib*.so files, and only there may an app targeting API 29+ execute files), with the
 * library folder passed explicitly and glibc's rseq registration off (the app seccomp filter kills it).
 */
public final class RunnerCommand {
    public static final String LOADER = "libld-linux-aarch64.so";
    public static final String RUNNER = "libqwen_bench.so";
    public static final String TUNABLES = "glibc.pthread.rseq=0";

    private RunnerCommand() {}

    public static List<String> serve(File nativeLibraryDir, File bundle, Integer threads) {
        List<String> cmd = new ArrayList<String>();
        cmd.add(new File(nativeLibraryDir, LOADER).getPath());
        cmd.add("--library-path");
        cmd.add(nativeLibraryDir.getPath());
        cmd.add(new File(nativeLibraryDir, RUNNER).getPath());
        cmd.add("--serve");
        cmd.add("--bundle");
        cmd.add(bundle.getPath());
        if (threads != null) {
            cmd.add("--threads");
            cmd.add(String.valueOf(threads));
        }
        return cmd;
    }

    /** Variables set on top of the app's environment. */
    public static Map<String, String> environment() {
        Map<String, String> env = new LinkedHashMap<String, String>();
        env.put("GLIBC_TUNABLES", TUNABLES);
        return env;
    }

    /** What is missing from nativeLibraryDir for the runner to start, or null. */
    public static String missing(File nativeLibraryDir) {
        for (String f : new String[] {LOADER, RUNNER}) {
            if (!new File(nativeLibraryDir, f).isFile()) {
                return new File(nativeLibraryDir, f) + " is missing: this APK was built without the native runner";
            }
        }
        return null;
    }

    /** `java org.qwenmobile.core.RunnerCommand LIBDIR BUNDLE`: the launch line as JSON, for check.sh to compare. */
    public static void main(String[] args) {
        Map<String, Object> m = new LinkedHashMap<String, Object>();
        m.put("argv", new java.util.ArrayList<Object>(serve(new File(args[0]), new File(args[1]), null)));
        m.put("env", new LinkedHashMap<String, Object>(environment()));
        System.out.println(Json.write(m));
    }
}
