package org.qwenmobile.app;

import android.app.Activity;
import android.content.Intent;
import android.net.Uri;
import android.os.Bundle;
import android.util.Log;
import android.view.WindowManager;
import android.widget.TextView;
import java.io.File;
import java.io.OutputStream;
import java.util.Map;
import org.qwenmobile.core.Files;

/**
 * The benchmark without a person: Firebase Test Lab's Game Loop intent (com.google.intent.action.TEST_LOOP) or
 * {@code adb shell am start -n org.qwenmobile.app/.HeadlessActivity -e bundle nano-8da4w -e prompt_lens 128,512
 * --ei gen 64 --ei runs 5 --ei warmup 1 [--ez images false]}. A bundle with a vision section also gets the report's
 * images rows (the test card per size: encode and time to first token) unless {@code images} is false. Writes the result JSON under files/results (and to the Game Loop's results
 * URI when given), logs "qwen-headless: done <file>" or "qwen-headless: error ...", and finishes.
 */
public class HeadlessActivity extends Activity {
    private static final String TAG = "qwen-headless";

    @Override
    protected void onCreate(Bundle saved) {
        super.onCreate(saved);
        getWindow().addFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON);
        final TextView view = new TextView(this);
        view.setText("headless benchmark running");
        setContentView(view);
        final Intent intent = getIntent();
        new Thread(new Runnable() {
            @Override
            public void run() {
                try {
                    File bundle = pickBundle(intent.getStringExtra("bundle"));
                    BenchRunner.Settings s = new BenchRunner.Settings();
                    String lens = intent.getStringExtra("prompt_lens");
                    if (lens != null) s.promptLengths = BenchActivity.parseInts(lens, "prompt_lens");
                    s.generate = intent.getIntExtra("gen", s.generate);
                    s.runs = intent.getIntExtra("runs", s.runs);
                    s.warmup = intent.getIntExtra("warmup", s.warmup);
                    s.idleSeconds = intent.getIntExtra("idle_seconds", (int) s.idleSeconds);
                    s.imageRows = intent.getBooleanExtra("images", s.imageRows);
                    File out = new BenchRunner(HeadlessActivity.this).run(bundle, s, new BenchRunner.Progress() {
                        @Override
                        public void onStatus(String text) {
                            Log.i(TAG, text);
                        }

                        @Override
                        public void onRun(Map<String, Object> p) {
                            Log.i(TAG, "run " + p);
                        }
                    });
                    Uri results = intent.getData();  // the Game Loop's results file, when Test Lab gives one
                    if (results != null && "com.google.intent.action.TEST_LOOP".equals(intent.getAction())) {
                        OutputStream os = getContentResolver().openOutputStream(results);
                        if (os != null) {
                            os.write(Files.readBytes(out));
                            os.close();
                        }
                    }
                    Log.i(TAG, "done " + out);
                } catch (Exception e) {
                    Log.e(TAG, "error " + e.getMessage(), e);
                    try {
                        Files.writeUtf8Atomically(new File(AppFiles.resultsDir(HeadlessActivity.this), "error.txt"),
                                String.valueOf(e.getMessage()) + "\n");
                    } catch (Exception ignored) {
                        // nothing more to report to
                    }
                }
                runOnUiThread(new Runnable() {
                    @Override
                    public void run() {
                        finish();
                    }
                });
            }
        }).start();
    }

    private File pickBundle(String name) {
        File dir = AppFiles.bundlesDir(this);
        if (name != null) {
            File f = new File(dir, name);
            if (!f.isDirectory()) throw new IllegalArgumentException("extra bundle: " + f + " does not exist");
            return f;
        }
        for (File f : org.qwenmobile.core.Bundle.candidates(dir)) {
            if (new File(f, "manifest.json").isFile()) return f;
        }
        throw new IllegalArgumentException("no bundle under " + dir + " (push one, or pass -e bundle NAME)");
    }
}
