package org.qwenmobile.app;

import android.app.Activity;
import android.os.Bundle;
import android.view.View;
import android.widget.Button;
import android.widget.CheckBox;
import android.widget.CompoundButton;
import android.widget.EditText;
import android.widget.LinearLayout;
import android.widget.ScrollView;
import android.widget.TextView;
import java.io.File;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.qwenmobile.core.BpeTokenizer;
import org.qwenmobile.core.ChatSession;

/** Chat with one bundle: streamed text, TTFT and tok/s per reply, thinking on/off, reset, save and restore. */
public class ChatActivity extends Activity {
    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private RunnerProcess runner;
    private ChatSession chat;
    private TextView transcript;
    private TextView status;
    private ScrollView scroll;
    private File bundleDir;

    private Button button(LinearLayout row, String label, View.OnClickListener l) {
        Button b = new Button(this);
        b.setText(label);
        b.setOnClickListener(l);
        row.addView(b);
        return b;
    }

    @Override
    protected void onCreate(Bundle saved) {
        super.onCreate(saved);
        bundleDir = new File(getIntent().getStringExtra(MainActivity.EXTRA_BUNDLE));
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        status = new TextView(this);
        status.setText("Starting the runner for " + bundleDir.getName() + "...");
        root.addView(status);
        LinearLayout controls = new LinearLayout(this);
        final CheckBox thinking = new CheckBox(this);
        thinking.setText("thinking");
        controls.addView(thinking);
        button(controls, "Reset", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                run(new Task() {
                    @Override
                    public String call() throws Exception {
                        chat.reset();
                        return "reset";
                    }
                });
                transcript.setText("");
            }
        });
        button(controls, "Save", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                run(new Task() {
                    @Override
                    public String call() throws Exception {
                        chat.save(snapshot().getPath());
                        return "saved at position " + chat.position();
                    }
                });
            }
        });
        button(controls, "Restore", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                run(new Task() {
                    @Override
                    public String call() throws Exception {
                        chat.load(snapshot().getPath());
                        return "restored position " + chat.position();
                    }
                });
            }
        });
        root.addView(controls);
        scroll = new ScrollView(this);
        transcript = new TextView(this);
        transcript.setTextIsSelectable(true);
        scroll.addView(transcript);
        root.addView(scroll, new LinearLayout.LayoutParams(LinearLayout.LayoutParams.MATCH_PARENT, 0, 1f));
        LinearLayout inputRow = new LinearLayout(this);
        final EditText prompt = new EditText(this);
        inputRow.addView(prompt, new LinearLayout.LayoutParams(0, LinearLayout.LayoutParams.WRAP_CONTENT, 1f));
        button(inputRow, "Send", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                final String text = prompt.getText().toString();
                if (text.trim().isEmpty() || chat == null) return;
                prompt.setText("");
                append("\n> " + text + "\n");
                run(new Task() {
                    @Override
                    public String call() throws Exception {
                        ChatSession.Reply r = chat.send(text, new ChatSession.Listener() {
                            @Override
                            public void onText(final String piece) {
                                append(piece);
                            }
                        });
                        append("\n");
                        return String.format(Locale.ROOT, "TTFT %.0f ms · prefill %.1f tok/s · decode %s · position %d/%d",
                                r.done.ttftMs, r.done.prefillTokS, r.done.decodeTokS == null ? "-"
                                        : String.format(Locale.ROOT, "%.1f tok/s", r.done.decodeTokS),
                                chat.position(), runner.ready.maxSeqLen);
                    }
                });
            }
        });
        root.addView(inputRow);
        setContentView(root);

        run(new Task() {
            @Override
            public String call() throws Exception {
                org.qwenmobile.core.Bundle b = org.qwenmobile.core.Bundle.open(bundleDir,
                        AppFiles.manifestSchema(ChatActivity.this), null);
                if (b.tokenizerFile() == null) throw new IllegalStateException("the bundle has no tokenizer.json");
                BpeTokenizer tok = BpeTokenizer.fromFile(b.tokenizerFile());
                runner = new RunnerProcess(ChatActivity.this, bundleDir, null);
                final boolean think = Boolean.TRUE.equals(b.thinkingDefault());
                chat = new ChatSession(runner.client, tok, runner.ready.stopIds, think);
                runOnUiThread(new Runnable() {
                    @Override
                    public void run() {
                        thinking.setChecked(think);
                        thinking.setOnCheckedChangeListener(new CompoundButton.OnCheckedChangeListener() {
                            @Override
                            public void onCheckedChanged(CompoundButton v, boolean on) {
                                chat.template = new org.qwenmobile.core.ChatTemplate(on);  // from the next turn
                            }
                        });
                    }
                });
                return b.summary() + " · thinking " + (think ? "on" : "off") + " by the manifest";
            }
        });
    }

    private File snapshot() {
        return new File(AppFiles.snapshotsDir(this), bundleDir.getName() + ".state");
    }

    interface Task {
        String call() throws Exception;
    }

    private void run(final Task t) {
        worker.submit(new Runnable() {
            @Override
            public void run() {
                String msg;
                try {
                    msg = t.call();
                } catch (Exception e) {
                    msg = "error: " + e.getMessage();
                }
                final String m = msg;
                runOnUiThread(new Runnable() {
                    @Override
                    public void run() {
                        status.setText(m);
                    }
                });
            }
        });
    }

    private void append(final String s) {
        runOnUiThread(new Runnable() {
            @Override
            public void run() {
                transcript.append(s);
                scroll.post(new Runnable() {
                    @Override
                    public void run() {
                        scroll.fullScroll(View.FOCUS_DOWN);
                    }
                });
            }
        });
    }

    @Override
    protected void onDestroy() {
        if (runner != null) runner.stop();
        worker.shutdownNow();
        super.onDestroy();
    }
}
