import Foundation
import QwenMobileAppLogic
import QwenMobileKit
import XCTest

@testable import QwenMobileEngines

let repoRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .deletingLastPathComponent().deletingLastPathComponent()

func nanoManifest() throws -> Manifest {
  let url = repoRoot.appendingPathComponent("tests/apps/vectors/engine_plan_pte.json")
  return try Manifest(json: try JSONNode.load(url)["manifest"])
}

/// Answers with logits whose argmax follows `script` within a turn (a prefill step restarts it; a .pte prompt is
/// prefill steps only), recording what was fed.
final class ScriptedEngine: InferenceEngine {
  let planner: EnginePlanner
  var runtimeDescription: String { "scripted" }
  var script: [Int]
  var produced = 0
  var fed: [Int] = []
  var steps = 0

  init(manifest: Manifest, script: [Int]) throws {
    planner = try EnginePlanner(manifest: manifest)
    self.script = script
  }

  func execute(_ step: PlannedStep) throws -> [Float] {
    steps += 1
    if step.startPosition == 0 { fed = [] }
    XCTAssertEqual(step.startPosition, fed.count, "steps arrive at consecutive positions")
    fed += step.tokens
    produced = step.kind == .prefill ? 0 : produced + 1
    var logits = [Float](repeating: 0, count: planner.manifest.vocabSize)
    logits[script[produced % script.count]] = 1
    return logits
  }
}

/// A device whose thermal state and battery follow a script; time advances only when the benchmark sleeps or runs.
final class ScriptedProbe: DeviceProbe {
  var thermal: [String]
  var clock = 0.0
  var sleeps: [Double] = []
  var battery = 80.0
  var lowPower = false
  var cpu = 10.0

  init(thermal: [String]) { self.thermal = thermal }

  func snapshot() -> DeviceSnapshot {
    let state = thermal.count > 1 ? thermal.removeFirst() : thermal[0]
    clock += 0.5
    cpu += 0.25
    battery -= 0.1
    return DeviceSnapshot(batteryPct: battery, batteryState: "unplugged", lowPowerMode: lowPower, thermal: state)
  }
  func cpuSeconds() -> Double { cpu }
  func peakMemoryBytes() -> UInt64? { 123_456 }
  func sleep(seconds: Double) {
    sleeps.append(seconds)
    clock += seconds
  }
  func now() -> Double { clock }
  func deviceInfo() -> DeviceInfo { DeviceInfo(model: "iPhone17,1", os: "iOS 18.2", arch: "arm64") }
}

final class BenchmarkRunnerTests: XCTestCase {
  func testWarmupsDroppedAndEveryRunWaitsForNominal() throws {
    let manifest = try nanoManifest()
    let engine = try ScriptedEngine(manifest: manifest, script: [5, 6, 7])
    // Start hot: the first measured run must wait through "serious" and "fair" first.
    // Read at the start and after each of the two warm-ups, then before the first measured run.
    let probe = ScriptedProbe(thermal: ["nominal", "nominal", "nominal", "serious", "fair", "nominal"])
    let runner = BenchmarkRunner(engine: engine, probe: probe)
    var events: [BenchmarkRunner.Event] = []
    runner.onEvent = { events.append($0) }
    let settings = try BenchSettings(
      promptLengths: [5, 12], generateTokens: 4, runs: 3, warmup: 2,
      promptSource: "test")
    let report = try runner.run(
      .init(settings: settings, coolDownTimeout: 60, pollSeconds: 2), bundlePath: nil,
      appVersion: "t", loadMs: 1)
    XCTAssertEqual(report.samples[5]?.count, 3)
    XCTAssertEqual(report.samples[12]?.count, 3)
    XCTAssertEqual(report.samples[12]?.first?.generatedTokens, 4)
    XCTAssertEqual(report.samples[12]?.first?.decodeStepMs.count, 3)
    XCTAssertEqual(probe.sleeps, [2, 2], "waited twice (serious, fair) before the first measured run")
    XCTAssertTrue(events.contains(.coolingDown(thermal: "serious")))
    let warmups = events.filter { if case .run(_, _, _, true) = $0 { return true } else { return false } }
    XCTAssertEqual(warmups.count, 4)
    let doc = try report.json()
    let energy = doc["energy"] as! [String: Any]
    let timeline = (energy["thermal"] as! [[String: Any]]).map { $0["value"] as! String }
    XCTAssertTrue(timeline.contains("serious") && timeline.contains("fair"), "\(timeline)")
    XCTAssertGreaterThan(energy["cpu_seconds"] as! Double, 0)
    XCTAssertLessThan(energy["battery_delta_pct"] as! Double, 0)
    XCTAssertEqual((doc["memory"] as! [String: Any])["peak_rss_bytes"] as? Int, 123_456)
  }

  func testTimeoutIsNotedNotHidden() throws {
    let engine = try ScriptedEngine(manifest: try nanoManifest(), script: [5])
    let probe = ScriptedProbe(thermal: ["critical"])
    let settings = try BenchSettings(promptLengths: [4], generateTokens: 2, runs: 1, warmup: 0, promptSource: "t")
    let report = try BenchmarkRunner(engine: engine, probe: probe).run(
      .init(settings: settings, coolDownTimeout: 10, pollSeconds: 5), bundlePath: nil, appVersion: "t", loadMs: nil)
    XCTAssertTrue(report.notes.contains { $0.contains("started at thermal state 'critical'") }, "\(report.notes)")
  }

  func testPromptsAvoidStopIDsAndFitTheContext() throws {
    let manifest = try nanoManifest()
    let prompt = BenchmarkRunner.prompt(length: 2000, vocab: 8, seed: 1, avoid: [3, 4])
    XCTAssertEqual(prompt.count, 2000)
    XCTAssertFalse(prompt.contains(3) || prompt.contains(4))
    XCTAssertEqual(
      BenchmarkRunner.prompt(length: 9, vocab: 100, seed: 1, avoid: []),
      BenchmarkRunner.prompt(length: 9, vocab: 100, seed: 1, avoid: []))
    let engine = try ScriptedEngine(manifest: manifest, script: [5])
    let settings = try BenchSettings(
      promptLengths: [manifest.maxSeqLen], generateTokens: 1, runs: 1, warmup: 0,
      promptSource: "t")
    XCTAssertThrowsError(
      try BenchmarkRunner(engine: engine, probe: ScriptedProbe(thermal: ["nominal"])).run(
        .init(settings: settings), bundlePath: nil, appVersion: "t", loadMs: nil))
  }
}

final class ChatControllerTests: XCTestCase {
  /// Two turns fed turn by turn (state kept) are token for token the whole conversation rendered at once, as
  /// runtime/chat.py requires; the reply streams and stops at <|im_end|>.
  func testTurnsFeedTheWholeConversation() throws {
    let manifest = try nanoManifest()
    let tokenizer = try BPETokenizer(url: repoRoot.appendingPathComponent("models/nano/tokenizer.json"))
    let reply = try tokenizer.encode("Hi there")
    let imEnd = tokenizer.id(of: "<|im_end|>")!
    let engine = try ScriptedEngine(manifest: manifest, script: reply + [imEnd])
    let chat = ChatController(engine: engine, tokenizer: tokenizer, thinking: false, systemPrompt: "Be brief.")
    var streamed = ""
    try chat.send("Hello") { streamed += $0 }
    XCTAssertEqual(streamed, "Hi there")
    XCTAssertEqual(chat.messages.last?.text, "Hi there")
    try chat.send("Again")
    let whole = ChatTemplate().render(
      [
        ChatMessage(role: "system", content: "Be brief."), ChatMessage(role: "user", content: "Hello"),
        ChatMessage(role: "assistant", content: "Hi there"), ChatMessage(role: "user", content: "Again"),
      ],
      addGenerationPrompt: true, thinking: false)
    // Everything fed so far, plus the last reply's tokens that are not fed yet (all but the pending last one).
    XCTAssertEqual(tokenizer.decode(Array(engine.fed.prefix(try tokenizer.encode(whole).count))), whole)
    XCTAssertNotNil(chat.messages.last?.stats)
  }
}

final class BundleLibraryTests: XCTestCase {
  func testImportVerifiesAndLeavesNothingHalfCopied() throws {
    let fm = FileManager.default
    let tmp = fm.temporaryDirectory.appendingPathComponent("qm-lib-\(UUID().uuidString)")
    defer { try? fm.removeItem(at: tmp) }
    let source = tmp.appendingPathComponent("incoming/nano-bundle")
    try fm.createDirectory(at: source, withIntermediateDirectories: true)
    let vector = try JSONNode.load(repoRoot.appendingPathComponent("tests/apps/vectors/engine_plan_pte.json"))
    var manifest = try vector["manifest"].object()
    manifest["files"] = ["tokenizer.json": try vector["manifest"]["files"]["tokenizer.json"].object()]
    try JSONWriter.data(manifest).write(to: source.appendingPathComponent("manifest.json"))
    try fm.copyItem(
      at: repoRoot.appendingPathComponent("models/nano/tokenizer.json"),
      to: source.appendingPathComponent("tokenizer.json"))
    let library = BundleLibrary(root: tmp.appendingPathComponent("Bundles"))
    var changes = 0
    library.onChange = { changes += 1 }
    try library.importBundle(from: source)
    XCTAssertEqual(library.entries.map(\.modelID), ["nano"])
    XCTAssertGreaterThan(changes, 0)
    XCTAssertThrowsError(try library.importBundle(from: source)) { XCTAssertTrue("\($0)".contains("already exists")) }
    // A corrupt copy is refused and leaves no staging folder behind.
    let bad = tmp.appendingPathComponent("incoming/bad")
    try fm.copyItem(at: source, to: bad)
    try Data("x".utf8).write(to: bad.appendingPathComponent("tokenizer.json"))
    XCTAssertThrowsError(try library.importBundle(from: bad))
    let left = try fm.contentsOfDirectory(atPath: library.root.path)
    XCTAssertEqual(left, ["nano-bundle"])
  }
}

final class StubTests: XCTestCase {
  /// On Linux the SDK stand-ins refuse to compute, so a test that reaches an engine call fails loudly.
  func testStubsRefuseToRun() throws {
    #if os(Linux)
      let manifest = try nanoManifest()
      XCTAssertEqual(manifest.recipeName, "xnnpack")
      let folder = FileManager.default.temporaryDirectory.appendingPathComponent("qm-stub-\(UUID().uuidString)")
      try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
      defer { try? FileManager.default.removeItem(at: folder) }
      let vector = try JSONNode.load(repoRoot.appendingPathComponent("tests/apps/vectors/engine_plan_pte.json"))
      try JSONWriter.data(try vector["manifest"].object()).write(to: folder.appendingPathComponent("manifest.json"))
      let bundle = try BundleFolder(url: folder, verifyHashes: false)
      XCTAssertThrowsError(try ExecuTorchEngine(bundle: bundle)) {
        XCTAssertTrue("\($0)".contains("only type-checks"), "\($0)")
      }
    #endif
  }
}
