package org.qwenmobile.app;

import android.app.Activity;
import android.content.ActivityNotFoundException;
import android.content.ContentResolver;
import android.content.Intent;
import android.database.Cursor;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.media.ExifInterface;
import android.net.Uri;
import android.os.Build;
import android.os.Bundle;
import android.provider.MediaStore;
import android.view.View;
import android.widget.Button;
import android.widget.CheckBox;
import android.widget.CompoundButton;
import android.widget.EditText;
import android.widget.ImageView;
import android.widget.LinearLayout;
import android.widget.ScrollView;
import android.widget.TextView;
import java.io.File;
import java.io.FileNotFoundException;
import java.io.InputStream;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.qwenmobile.core.BpeTokenizer;
import org.qwenmobile.core.ChatSession;
import org.qwenmobile.core.ImageAttachment;
import org.qwenmobile.core.ImageInput;

/**
 * Chat with one bundle: streamed text, TTFT and tok/s per reply, thinking on/off, reset, save and restore; for a bundle
 * with a {@code vision} section, an image picked from the phone goes with the next prompt.
 */
public class ChatActivity extends Activity {
    /** MediaStore.ACTION_PICK_IMAGES (API 33; android.jar here is API 23's). */
    static final String ACTION_PICK_IMAGES = "android.provider.action.PICK_IMAGES";
    private static final int REQUEST_IMAGE = 1;
    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    // Decoding a photo must not wait behind a reply being generated on the worker.
    private final ExecutorService decoder = Executors.newSingleThreadExecutor();
    private final ImageAttachment attachment = new ImageAttachment();  // touched on the UI thread only
    private volatile org.qwenmobile.core.Bundle.Vision vision;
    private Button imageButton;
    private Button clearImageButton;
    private ImageView thumbnail;
    private TextView imageLine;
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
        root.addView(imageRow());
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
                final ImageInput image = attachment.take();  // one image per turn: this one goes now
                showAttachment(null);
                append("\n> " + (image == null ? "" : ImageAttachment.transcriptMark(image) + " ") + text + "\n");
                run(new Task() {
                    @Override
                    public String call() throws Exception {
                        ChatSession.Reply r = chat.send(text, image, new ChatSession.Listener() {
                            @Override
                            public void onText(final String piece) {
                                append(piece);
                            }
                        });
                        append("\n");
                        return String.format(Locale.ROOT, "TTFT %.0f ms%s · prefill %.1f tok/s · decode %s · position %d/%d",
                                r.done.ttftMs, r.done.imageEncodeMs == null ? "" : String.format(Locale.ROOT,
                                        " (image encode %.0f ms, %d tokens)", r.done.imageEncodeMs, r.done.imageTokens),
                                r.done.prefillTokS, r.done.decodeTokS == null ? "-"
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
                chat.vision = b.vision();
                vision = chat.vision;
                final String noImages = ImageAttachment.unavailableReason(vision);
                runOnUiThread(new Runnable() {
                    @Override
                    public void run() {
                        imageButton.setEnabled(noImages == null);
                        imageLine.setText(noImages != null ? noImages : "no image attached (this bundle encodes "
                                + vision.sizes + " HxW)");
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

    /** [Image] [thumbnail] attachment line [Clear]: the Image button stays disabled until a vision bundle is loaded. */
    private View imageRow() {
        LinearLayout row = new LinearLayout(this);
        row.setGravity(android.view.Gravity.CENTER_VERTICAL);
        imageButton = button(row, "Image", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                pickImage();
            }
        });
        imageButton.setEnabled(false);
        int side = Math.round(56 * getResources().getDisplayMetrics().density);
        thumbnail = new ImageView(this);
        thumbnail.setScaleType(ImageView.ScaleType.FIT_CENTER);
        thumbnail.setVisibility(View.GONE);
        row.addView(thumbnail, new LinearLayout.LayoutParams(side, side));
        imageLine = new TextView(this);
        imageLine.setText("images: available once the bundle is loaded");
        row.addView(imageLine, new LinearLayout.LayoutParams(0, LinearLayout.LayoutParams.WRAP_CONTENT, 1f));
        clearImageButton = button(row, "Clear", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                attachment.clear();
                showAttachment(null);
            }
        });
        clearImageButton.setVisibility(View.GONE);
        return row;
    }

    /** The photo picker on API 33+ (no storage permission needed), else any app that offers image/* content. */
    private void pickImage() {
        if (Build.VERSION.SDK_INT >= 33) {
            Intent picker = new Intent(ACTION_PICK_IMAGES);
            picker.setType("image/*");
            try {
                startActivityForResult(picker, REQUEST_IMAGE);
                return;
            } catch (ActivityNotFoundException e) {
                // Some API 33+ builds ship without the picker: the document chooser below still works.
            }
        }
        Intent content = new Intent(Intent.ACTION_GET_CONTENT);
        content.setType("image/*");
        content.addCategory(Intent.CATEGORY_OPENABLE);
        try {
            startActivityForResult(Intent.createChooser(content, "Image for the next prompt"), REQUEST_IMAGE);
        } catch (ActivityNotFoundException e) {
            imageLine.setText("image: no app on this phone offers images (ACTION_GET_CONTENT image/*)");
        }
    }

    @Override
    protected void onActivityResult(int requestCode, int resultCode, Intent data) {
        super.onActivityResult(requestCode, resultCode, data);
        if (requestCode != REQUEST_IMAGE || resultCode != RESULT_OK) return;  // cancelled: keep what was attached
        final Uri uri = data == null ? null : data.getData();
        if (uri == null) {
            imageLine.setText("image: the picker returned no file");
            return;
        }
        if (ImageAttachment.unavailableReason(vision) != null) {
            // The screen was recreated while the picker was open and its bundle is not loaded again yet.
            imageLine.setText("image: the bundle is not loaded yet; pick the image again once it is");
            return;
        }
        imageLine.setText("decoding the image...");
        decoder.submit(new Runnable() {
            @Override
            public void run() {
                try {
                    final ImageAttachment.Plan plan = planFor(uri);
                    final ImageInput image = decode(uri, plan);
                    final Bitmap thumb = Bitmap.createBitmap(ImageAttachment.argb(image), image.width, image.height,
                            Bitmap.Config.ARGB_8888);
                    runOnUiThread(new Runnable() {
                        @Override
                        public void run() {
                            attachment.attach(plan, image);
                            showAttachment(thumb);
                        }
                    });
                } catch (final Exception | OutOfMemoryError e) {
                    runOnUiThread(new Runnable() {
                        @Override
                        public void run() {
                            imageLine.setText(e instanceof OutOfMemoryError ? "image: out of memory decoding it"
                                    : e.getMessage());
                        }
                    });
                }
            }
        });
    }

    /** The stored size (a bounds-only decode) and EXIF orientation -> the size, subsampling and rotation to use. */
    private ImageAttachment.Plan planFor(Uri uri) throws Exception {
        BitmapFactory.Options bounds = new BitmapFactory.Options();
        bounds.inJustDecodeBounds = true;
        InputStream in = open(uri);
        try {
            BitmapFactory.decodeStream(in, null, bounds);
        } finally {
            in.close();
        }
        if (bounds.outWidth < 1 || bounds.outHeight < 1) {
            throw new IllegalArgumentException(ImageAttachment.decodeFailure(getContentResolver().getType(uri),
                    Build.VERSION.SDK_INT));
        }
        return new ImageAttachment.Plan(bounds.outWidth, bounds.outHeight, exifOrientation(uri), vision);
    }

    private ImageInput decode(Uri uri, ImageAttachment.Plan plan) throws Exception {
        BitmapFactory.Options opts = new BitmapFactory.Options();
        opts.inSampleSize = plan.sampleSize;
        opts.inPreferredConfig = Bitmap.Config.ARGB_8888;
        Bitmap bitmap;
        InputStream in = open(uri);
        try {
            bitmap = BitmapFactory.decodeStream(in, null, opts);
        } finally {
            in.close();
        }
        if (bitmap == null) {
            throw new IllegalArgumentException(ImageAttachment.decodeFailure(getContentResolver().getType(uri),
                    Build.VERSION.SDK_INT));
        }
        try {
            return plan.orient(BitmapImages.scaled(bitmap, plan.scaleWidth, plan.scaleHeight));
        } finally {
            bitmap.recycle();
        }
    }

    private InputStream open(Uri uri) throws FileNotFoundException {
        InputStream in = getContentResolver().openInputStream(uri);
        if (in == null) throw new FileNotFoundException("image: the provider of " + uri + " gave no data");
        return in;
    }

    /**
     * The EXIF orientation tag (ExifInterface(InputStream) is API 24: reflection against API 23's android.jar), else
     * MediaStore's orientation column, else 1 (as stored, what a photo without the tag means).
     */
    private int exifOrientation(Uri uri) {
        ContentResolver cr = getContentResolver();
        if (Build.VERSION.SDK_INT >= 24) {
            InputStream in = null;
            try {
                in = cr.openInputStream(uri);
                if (in != null) {
                    ExifInterface exif = (ExifInterface) ExifInterface.class.getConstructor(InputStream.class)
                            .newInstance(in);
                    return exif.getAttributeInt(ExifInterface.TAG_ORIENTATION, 1);
                }
            } catch (Exception e) {
                // No readable EXIF (PNG, an unsupported container): MediaStore's column below.
            } finally {
                closeQuietly(in);
            }
        }
        Cursor c = null;
        try {
            c = cr.query(uri, new String[] {MediaStore.Images.ImageColumns.ORIENTATION}, null, null, null);
            if (c != null && c.moveToFirst() && !c.isNull(0)) return ImageAttachment.exifFromDegrees(c.getInt(0));
        } catch (Exception e) {
            // Not a MediaStore item (a document provider without the column): as stored.
        } finally {
            if (c != null) c.close();
        }
        return 1;
    }

    private static void closeQuietly(InputStream in) {
        if (in == null) return;
        try {
            in.close();
        } catch (java.io.IOException ignored) {
            // read-only stream: nothing was written that could be lost
        }
    }

    /** thumb null: nothing attached. A bundle without images keeps its reason on the line. */
    private void showAttachment(Bitmap thumb) {
        thumbnail.setImageBitmap(thumb);
        thumbnail.setVisibility(thumb == null ? View.GONE : View.VISIBLE);
        clearImageButton.setVisibility(attachment.attached() ? View.VISIBLE : View.GONE);
        if (ImageAttachment.unavailableReason(vision) == null) imageLine.setText(attachment.statusLine());
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
        decoder.shutdownNow();
        super.onDestroy();
    }
}
