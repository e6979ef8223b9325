package org.qwenmobile.core;

import java.io.BufferedReader;
import java.io.Closeable;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.util.Map;

/**
 * The app's side of {@code qwen-bench --serve}: one request at a time, replies matched by id, token events streamed to
 * a listener. {@link #cancel()} may be called from another thread while a generate runs. A runner error line becomes a
 * {@link RunnerError} and the session stays usable; a line that is not the protocol or an early end of the runner's
 * output is an exception that says so (the caller restarts the runner).
 */
public final class ServeClient implements Closeable {
    public interface TokenListener {
        void onToken(int token, int index, double ms);
    }

    /** The runner refused a request (its message names the field); the runner keeps serving. */
    public static final class RunnerError extends Exception {
        public RunnerError(String message) {
            super(message);
        }
    }

    private final BufferedReader out;
    private final Writer in;
    private long nextId = 1;
    private ServeProtocol.Ready ready;

    public ServeClient(InputStream runnerStdout, OutputStream runnerStdin) {
        try {
            out = new BufferedReader(new InputStreamReader(runnerStdout, "UTF-8"));
            in = new OutputStreamWriter(runnerStdin, "UTF-8");
        } catch (java.io.UnsupportedEncodingException e) {
            throw new IllegalStateException(e);
        }
    }

    private String readLine() throws IOException {
        String line = out.readLine();
        if (line == null) throw new IOException("the runner closed its output (it exited; see its stderr)");
        return line;
    }

    private void send(String line) throws IOException {
        synchronized (in) {
            in.write(line);
            in.write('\n');
            in.flush();
        }
    }

    /** The start-up line: the bundle loaded, or the runner's reason why not. */
    public ServeProtocol.Ready awaitReady() throws IOException, ServeProtocol.ProtocolException, RunnerError {
        String line = readLine();
        ServeProtocol.Event e = ServeProtocol.parse(line);
        if (e.type == ServeProtocol.Type.ERROR) throw new RunnerError(e.message());
        if (e.type != ServeProtocol.Type.READY) throw new ServeProtocol.ProtocolException("expected the ready line", line);
        ready = e.ready();
        return ready;
    }

    public ServeProtocol.Ready ready() {
        return ready;
    }

    private ServeProtocol.Event await(long id, TokenListener listener)
            throws IOException, ServeProtocol.ProtocolException, RunnerError {
        while (true) {
            String line = readLine();
            ServeProtocol.Event e = ServeProtocol.parse(line);
            if (e.id != null && !(e.id instanceof Long && (Long) e.id == id)) {
                // Only a reply to an earlier request (a cancel's echo) can arrive out of turn; ours are sequential.
                if (e.type == ServeProtocol.Type.ERROR) continue;
                throw new ServeProtocol.ProtocolException("a reply to request " + e.id + " while waiting for " + id, line);
            }
            switch (e.type) {
                case TOKEN:
                    if (listener != null) listener.onToken(e.token(), e.index(), e.ms());
                    continue;
                case ERROR:
                    throw new RunnerError(e.message());
                case READY:
                    throw new ServeProtocol.ProtocolException("a second ready line", line);
                default:
                    return e;
            }
        }
    }

    private ServeProtocol.Event expect(long id, ServeProtocol.Type type, TokenListener l)
            throws IOException, ServeProtocol.ProtocolException, RunnerError {
        ServeProtocol.Event e = await(id, l);
        if (e.type != type) {
            throw new ServeProtocol.ProtocolException("expected a " + type.name().toLowerCase(java.util.Locale.ROOT)
                    + " event", Json.write(e.fields));
        }
        return e;
    }

    public ServeProtocol.Done generate(int[] promptIds, int maxNewTokens, ServeProtocol.Sampling sampling,
                                       boolean stopAtStopIds, boolean continueSession, TokenListener listener)
            throws IOException, ServeProtocol.ProtocolException, RunnerError {
        return generate(promptIds, null, maxNewTokens, sampling, stopAtStopIds, continueSession, listener);
    }

    /** A generate whose prompt holds one image token for {@code image} (null: a text prompt). */
    public ServeProtocol.Done generate(int[] promptIds, ImageInput image, int maxNewTokens,
                                       ServeProtocol.Sampling sampling, boolean stopAtStopIds, boolean continueSession,
                                       TokenListener listener)
            throws IOException, ServeProtocol.ProtocolException, RunnerError {
        long id = nextId++;
        send(ServeProtocol.generate(id, promptIds, maxNewTokens, sampling, stopAtStopIds, continueSession, image));
        return expect(id, ServeProtocol.Type.DONE, listener).done();
    }

    /** Stops a running generate between tokens (its done line says "cancelled"). Safe from any thread. */
    public void cancel() throws IOException {
        send(ServeProtocol.cancel());
    }

    public Map<String, Object> bench(int[] promptLens, int gen, int runs, int warmup, long seed)
            throws IOException, ServeProtocol.ProtocolException, RunnerError {
        long id = nextId++;
        send(ServeProtocol.bench(id, promptLens, gen, runs, warmup, seed));
        return Json.obj(expect(id, ServeProtocol.Type.BENCH, null).fields.get("result"), "result");
    }

    public int reset() throws IOException, ServeProtocol.ProtocolException, RunnerError {
        long id = nextId++;
        send(ServeProtocol.reset(id));
        return (int) Json.integer(expect(id, ServeProtocol.Type.OK, null).fields.get("position"), "position");
    }

    public long save(String absPath) throws IOException, ServeProtocol.ProtocolException, RunnerError {
        long id = nextId++;
        send(ServeProtocol.save(id, absPath));
        return Json.integer(expect(id, ServeProtocol.Type.OK, null).fields.get("bytes"), "bytes");
    }

    /** Restores a saved state; returns the position it continues from. */
    public int load(String absPath) throws IOException, ServeProtocol.ProtocolException, RunnerError {
        long id = nextId++;
        send(ServeProtocol.load(id, absPath));
        return (int) Json.integer(expect(id, ServeProtocol.Type.OK, null).fields.get("position"), "position");
    }

    public Map<String, Object> info() throws IOException, ServeProtocol.ProtocolException, RunnerError {
        long id = nextId++;
        send(ServeProtocol.info(id));
        return expect(id, ServeProtocol.Type.INFO, null).fields;
    }

    public void quit() throws IOException, ServeProtocol.ProtocolException, RunnerError {
        long id = nextId++;
        send(ServeProtocol.quit(id));
        expect(id, ServeProtocol.Type.BYE, null);
    }

    @Override
    public void close() throws IOException {
        try {
            in.close();  // EOF on stdin = quit, for a runner we no longer talk to
        } finally {
            out.close();
        }
    }
}
