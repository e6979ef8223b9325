import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.qwenmobile.core.BpeTokenizer;
import org.qwenmobile.core.Bundle;
import org.qwenmobile.core.ChatSession;
import org.qwenmobile.core.HashCache;
import org.qwenmobile.core.Files;
import org.qwenmobile.core.Json;
import org.qwenmobile.core.JsonSchema;
import org.qwenmobile.core.ServeClient;

/**
 * The app's chat path without Android: bundle check, tokenizer, ChatML and the serve client driving a real
 * qwen-bench --serve process. Prints one JSON object with every turn's prompt ids, tokens and text.
 *   java ChatDriver REPO BUNDLE MAX_NEW_TOKENS TURN... -- RUNNER ARGV...
 */
public class ChatDriver {
    public static void main(String[] args) throws Exception {
        File repo = new File(args[0]);
        File bundleDir = new File(args[1]);
        int maxNew = Integer.parseInt(args[2]);
        List<String> turns = new ArrayList<String>();
        List<String> argv = new ArrayList<String>();
        int i = 3;
        for (; i < args.length && !args[i].equals("--"); i++) turns.add(args[i]);
        for (i++; i < args.length; i++) argv.add(args[i]);
        JsonSchema schema = new JsonSchema(Json.parseObject(Files.readUtf8(new File(repo,
                "runtime/schemas/manifest.schema.json"))));
        Bundle b = Bundle.open(bundleDir, schema, new HashCache(null));
        BpeTokenizer tok = BpeTokenizer.fromFile(b.tokenizerFile());
        ProcessBuilder pb = new ProcessBuilder(argv);
        pb.redirectError(ProcessBuilder.Redirect.INHERIT);
        Process p = pb.start();
        ServeClient client = new ServeClient(p.getInputStream(), p.getOutputStream());
        client.awaitReady();
        ChatSession chat = new ChatSession(client, tok, client.ready().stopIds, Boolean.TRUE.equals(b.thinkingDefault()));
        chat.maxNewTokens = maxNew;
        List<Object> out = new ArrayList<Object>();
        for (String t : turns) {
            int[] prompt = chat.nextPromptIds(t);
            ChatSession.Reply r = chat.send(t, null);
            Map<String, Object> m = new LinkedHashMap<String, Object>();
            m.put("prompt_ids", Json.list(prompt));
            m.put("tokens", Json.list(r.done.tokens));
            m.put("text", r.text);
            m.put("position", (long) chat.position());
            m.put("stop_reason", r.done.stopReason);
            out.add(m);
        }
        client.quit();
        p.waitFor();
        Map<String, Object> doc = new LinkedHashMap<String, Object>();
        doc.put("thinking", Boolean.TRUE.equals(b.thinkingDefault()));
        doc.put("turns", out);
        System.out.println(Json.write(doc));
    }
}
