import java.io.File;
import java.util.Arrays;
import java.util.Map;
import org.qwenmobile.core.BenchReport;
import org.qwenmobile.core.Bundle;
import org.qwenmobile.core.Energy;
import org.qwenmobile.core.Files;
import org.qwenmobile.core.Json;
import org.qwenmobile.core.JsonSchema;

/** A bench report as the app writes it, from fixed runs, for test_android_logic.py to validate with Python. */
public class ReportSample {
    public static void main(String[] args) throws Exception {
        File repo = new File(args[0]);
        Map<String, Object> schema = Json.parseObject(Files.readUtf8(new File(repo, "runtime/schemas/manifest.schema.json")));
        Map<String, Object> cases = Json.parseObject(Files.readUtf8(new File(repo, "tests/apps/vectors/manifest_cases.json")));
        Map<String, Object> good = Json.obj(Json.obj(Json.arr(cases.get("cases"), "c").get(0), "c").get("manifest"), "m");
        Bundle bundle = Bundle.fromManifest(new File("/sdcard/b"), good, new JsonSchema(schema), "manifest.json");
        BenchReport r = new BenchReport("0.1.0", "qwen-bench --serve (glibc aarch64)");
        r.device.put("model", "Test Phone");
        r.device.put("os", "Android 14 (API 34)");
        r.device.put("arch", "arm64-v8a");
        r.device.put("cpu", null);
        r.device.put("cores", 8L);
        r.device.put("ram_bytes", 8L << 30);
        r.device.put("emulated", false);
        r.setBundle(bundle, "/sdcard/b");
        r.setSettings(new int[] {8, 16}, 4, 3, 1, 4, 0);
        double[][] v = {{10.5, 800, 100}, {12.25, 700, 90}, {11, 750, 95.5}};
        for (int len : new int[] {8, 16}) {
            for (double[] x : v) {
                r.add(new BenchReport.Run(len, 4, x[0] * len / 8, x[1], x[2], Arrays.asList(10.0, 10.5, 9.75)));
            }
        }
        Map<String, Object> energy = Energy.summarize(Energy.readTrace(new File(repo,
                "tests/native/power_traces/pixel_like_ua.jsonl")), Energy.CurrentUnit.AUTO);
        Energy.markValidity(energy, false);
        r.energy = energy;
        r.notes.add("fixed sample for the schema test");
        System.out.print(Json.writePretty(r.toJson()));
    }
}
