package org.qwenmobile.app;

import android.app.Activity;
import android.content.Intent;
import android.os.Bundle;
import android.os.PowerManager;
import android.text.InputType;
import android.view.View;
import android.view.WindowManager;
import android.widget.Button;
import android.widget.EditText;
import android.widget.LinearLayout;
import android.widget.TextView;
import java.io.File;
import java.util.Map;
import org.qwenmobile.core.Files;

/** The benchmark screen: settings, progress, a chart of tok/s and temperature per run, and sharing the JSON. */
public class BenchActivity extends Activity {
    private EditText lengths, tokens, runs, warmups;
    private TextView status;
    private ChartView chart;
    private File result;

    private EditText field(LinearLayout root, String label, String value) {
        LinearLayout row = new LinearLayout(this);
        TextView t = new TextView(this);
        t.setText(label);
        t.setMinWidth(320);
        row.addView(t);
        EditText e = new EditText(this);
        e.setText(value);
        e.setInputType(InputType.TYPE_CLASS_TEXT);
        row.addView(e, new LinearLayout.LayoutParams(0, LinearLayout.LayoutParams.WRAP_CONTENT, 1f));
        root.addView(row);
        return e;
    }

    static int[] parseInts(String s, String what) {
        String[] parts = s.trim().split("\\s*,\\s*");
        int[] out = new int[parts.length];
        for (int i = 0; i < parts.length; i++) {
            try {
                out[i] = Integer.parseInt(parts[i]);
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException(what + ": '" + parts[i] + "' is not a whole number");
            }
            if (out[i] < 1) throw new IllegalArgumentException(what + ": " + out[i] + " must be at least 1");
        }
        return out;
    }

    @Override
    protected void onCreate(Bundle saved) {
        super.onCreate(saved);
        final File bundleDir = new File(getIntent().getStringExtra(MainActivity.EXTRA_BUNDLE));
        getWindow().addFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON);
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        TextView title = new TextView(this);
        title.setText("Benchmark " + bundleDir.getName() + "\nUnplug the phone for energy numbers (plugged runs are"
                + " marked invalid).");
        root.addView(title);
        lengths = field(root, "prompt lengths", "128");
        tokens = field(root, "tokens", "64");
        runs = field(root, "runs", "5");
        warmups = field(root, "warm-ups", "1");
        LinearLayout buttons = new LinearLayout(this);
        final Button start = new Button(this);
        start.setText("Start");
        buttons.addView(start);
        Button share = new Button(this);
        share.setText("Share JSON");
        buttons.addView(share);
        root.addView(buttons);
        status = new TextView(this);
        root.addView(status);
        chart = new ChartView(this);
        root.addView(chart, new LinearLayout.LayoutParams(LinearLayout.LayoutParams.MATCH_PARENT, 0, 1f));
        setContentView(root);

        start.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                final BenchRunner.Settings s = new BenchRunner.Settings();
                try {
                    s.promptLengths = parseInts(lengths.getText().toString(), "prompt lengths");
                    s.generate = parseInts(tokens.getText().toString(), "tokens")[0];
                    s.runs = parseInts(runs.getText().toString(), "runs")[0];
                    s.warmup = Integer.parseInt(warmups.getText().toString().trim());
                } catch (RuntimeException e) {
                    status.setText(e.getMessage());
                    return;
                }
                start.setEnabled(false);
                chart.clear();
                final PowerManager.WakeLock lock = ((PowerManager) getSystemService(POWER_SERVICE))
                        .newWakeLock(PowerManager.PARTIAL_WAKE_LOCK, "qwenmobile:bench");
                lock.acquire(6 * 60 * 60 * 1000L);
                new Thread(new Runnable() {
                    @Override
                    public void run() {
                        String msg;
                        try {
                            result = new BenchRunner(BenchActivity.this).run(bundleDir, s, progress());
                            msg = "done: " + result;
                        } catch (Exception e) {
                            msg = "error: " + e.getMessage();
                        } finally {
                            lock.release();
                        }
                        final String m = msg;
                        runOnUiThread(new Runnable() {
                            @Override
                            public void run() {
                                status.setText(m);
                                start.setEnabled(true);
                            }
                        });
                    }
                }).start();
            }
        });
        share.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                if (result == null) return;
                try {
                    Intent send = new Intent(Intent.ACTION_SEND);
                    send.setType("application/json");
                    send.putExtra(Intent.EXTRA_SUBJECT, result.getName());
                    send.putExtra(Intent.EXTRA_TEXT, Files.readUtf8(result));
                    startActivity(Intent.createChooser(send, "Share benchmark result"));
                } catch (Exception e) {
                    status.setText("error: " + e.getMessage());
                }
            }
        });
    }

    private BenchRunner.Progress progress() {
        return new BenchRunner.Progress() {
            @Override
            public void onStatus(final String text) {
                runOnUiThread(new Runnable() {
                    @Override
                    public void run() {
                        status.setText(text);
                    }
                });
            }

            @Override
            public void onRun(final Map<String, Object> p) {
                runOnUiThread(new Runnable() {
                    @Override
                    public void run() {
                        chart.add((Double) p.get("decode_tok_s"), (Double) p.get("battery_temp_c"));
                    }
                });
            }
        };
    }
}
