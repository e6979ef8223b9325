package org.qwenmobile.app;

import android.content.Context;
import android.util.Log;
import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.util.ArrayDeque;
import java.util.List;
import org.qwenmobile.core.RunnerCommand;
import org.qwenmobile.core.ServeClient;
import org.qwenmobile.core.ServeProtocol;

/**
 * The packaged qwen-bench, started in --serve mode from nativeLibraryDir through its own glibc loader. Started from a
 * foreground activity: Android 12+ may kill child processes of background apps.
 */
final class RunnerProcess {
    private static final String TAG = "qwen-runner";
    final Process process;
    final ServeClient client;
    final ServeProtocol.Ready ready;
    private final ArrayDeque<String> stderrTail = new ArrayDeque<String>();

    RunnerProcess(Context c, File bundle, Integer threads) throws Exception {
        File libDir = new File(c.getApplicationInfo().nativeLibraryDir);
        String missing = RunnerCommand.missing(libDir);
        if (missing != null) throw new IOException(missing);
        List<String> cmd = RunnerCommand.serve(libDir, bundle, threads);
        ProcessBuilder pb = new ProcessBuilder(cmd);
        pb.environment().putAll(RunnerCommand.environment());
        pb.directory(c.getFilesDir());
        process = pb.start();
        final BufferedReader err = new BufferedReader(new InputStreamReader(process.getErrorStream(), "UTF-8"));
        Thread drain = new Thread(new Runnable() {
            @Override
            public void run() {
                try {
                    String line;
                    while ((line = err.readLine()) != null) {
                        Log.i(TAG, line);
                        synchronized (stderrTail) {
                            stderrTail.addLast(line);
                            if (stderrTail.size() > 20) stderrTail.removeFirst();
                        }
                    }
                } catch (IOException ignored) {
                    // the process ended
                }
            }
        }, "runner-stderr");
        drain.setDaemon(true);
        drain.start();
        client = new ServeClient(process.getInputStream(), process.getOutputStream());
        try {
            ready = client.awaitReady();
        } catch (Exception e) {
            stop();
            throw new IOException(e.getMessage() + "\n" + stderrTail());
        }
    }

    String stderrTail() {
        synchronized (stderrTail) {
            StringBuilder b = new StringBuilder();
            for (String s : stderrTail) b.append(s).append('\n');
            return b.toString();
        }
    }

    void stop() {
        try {
            client.close();
        } catch (IOException ignored) {
            // already gone
        }
        process.destroy();
    }
}
