package org.qwenmobile.app;

import android.app.Activity;
import android.content.Intent;
import android.os.Bundle;
import android.view.View;
import android.widget.AdapterView;
import android.widget.ArrayAdapter;
import android.widget.Button;
import android.widget.LinearLayout;
import android.widget.ListView;
import android.widget.TextView;
import java.io.File;
import java.util.ArrayList;
import java.util.List;
import org.qwenmobile.core.HashCache;

/** Bundles under the external files dir: validated (schema and cached sha256s), summarised; tap to chat. */
public class MainActivity extends Activity {
    static final String EXTRA_BUNDLE = "bundle";
    private final List<File> folders = new ArrayList<File>();
    private final List<String> rows = new ArrayList<String>();
    private final List<Boolean> usable = new ArrayList<Boolean>();
    private ArrayAdapter<String> adapter;
    private TextView header;

    @Override
    protected void onCreate(Bundle saved) {
        super.onCreate(saved);
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        header = new TextView(this);
        header.setPadding(24, 24, 24, 24);
        root.addView(header);
        Button refresh = new Button(this);
        refresh.setText("Rescan bundles");
        refresh.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                scan();
            }
        });
        root.addView(refresh);
        ListView list = new ListView(this);
        adapter = new ArrayAdapter<String>(this, android.R.layout.simple_list_item_1, rows);
        list.setAdapter(adapter);
        list.setOnItemClickListener(new AdapterView.OnItemClickListener() {
            @Override
            public void onItemClick(AdapterView<?> parent, View view, int pos, long id) {
                if (!usable.get(pos)) return;
                Intent i = new Intent(MainActivity.this, ChatActivity.class);
                i.putExtra(EXTRA_BUNDLE, folders.get(pos).getPath());
                startActivity(i);
            }
        });
        list.setOnItemLongClickListener(new AdapterView.OnItemLongClickListener() {
            @Override
            public boolean onItemLongClick(AdapterView<?> parent, View view, int pos, long id) {
                if (!usable.get(pos)) return true;
                Intent i = new Intent(MainActivity.this, BenchActivity.class);
                i.putExtra(EXTRA_BUNDLE, folders.get(pos).getPath());
                startActivity(i);
                return true;
            }
        });
        root.addView(list);
        setContentView(root);
        scan();
    }

    private void scan() {
        final File dir = AppFiles.bundlesDir(this);
        header.setText("Bundles in " + dir + "\n(adb push out/nano-8da4w " + dir + "/)\nTap: chat · long press: benchmark\n"
                + "Checking hashes...");
        new Thread(new Runnable() {
            @Override
            public void run() {
                final List<File> f = new ArrayList<File>();
                final List<String> r = new ArrayList<String>();
                final List<Boolean> u = new ArrayList<Boolean>();
                HashCache cache = AppFiles.hashCache(MainActivity.this);
                for (File folder : org.qwenmobile.core.Bundle.candidates(dir)) {
                    f.add(folder);
                    try {
                        org.qwenmobile.core.Bundle b = org.qwenmobile.core.Bundle.open(folder,
                                AppFiles.manifestSchema(MainActivity.this), null);
                        if (b.isAppleOnly()) {
                            r.add(folder.getName() + "\n" + b.summary() + " (Core ML: runs in the iOS app)");
                            u.add(false);
                            continue;
                        }
                        b.verifyFiles(cache);
                        r.add(folder.getName() + "\n" + b.summary());
                        u.add(true);
                    } catch (Exception e) {
                        r.add(folder.getName() + "\nnot usable: " + e.getMessage());
                        u.add(false);
                    }
                }
                runOnUiThread(new Runnable() {
                    @Override
                    public void run() {
                        folders.clear();
                        folders.addAll(f);
                        rows.clear();
                        rows.addAll(r);
                        usable.clear();
                        usable.addAll(u);
                        adapter.notifyDataSetChanged();
                        header.setText("Bundles in " + dir + ": " + f.size() + "\nTap: chat · long press: benchmark");
                    }
                });
            }
        }).start();
    }
}
