#if os(iOS)
  import QwenMobileAppLogic
  import QwenMobileEngines
  import QwenMobileKit
  import XCTest

  /// The app's benchmark, headless, for device farms (AWS Device Farm "XCTest", Firebase Test Lab "xctest"; see
  /// devicefarm/README.md). The bundle comes with the test bundle's resources (folder reference `TestBundle`, filled
  /// by devicefarm/prepare_bundle.sh) or from Documents/Bundles. XCTClockMetric, XCTCPUMetric (CPU time: the energy
  /// proxy on iOS) and XCTMemoryMetric are recorded by XCTest itself; the bench-schema JSON goes to the test's
  /// attachments, which both farms keep.
  final class BenchmarkPerformanceTests: XCTestCase {
    func bundleURL() throws -> URL {
      if let url = Bundle(for: Self.self).url(forResource: "TestBundle", withExtension: nil) { return url }
      let library = BundleLibrary(root: try BundleLibrary.defaultRoot())
      library.refresh()
      guard let first = library.entries.first(where: { $0.problem == nil }) else {
        throw XCTSkip("no bundle: run devicefarm/prepare_bundle.sh or copy one into Documents/Bundles")
      }
      return first.url
    }

    var engine: InferenceEngine!
    var folder: BundleFolder!

    /// Loading (and, for Core ML, compiling) happens once per test, outside the measured blocks; measure() itself
    /// runs in a synchronous test.
    override func setUp() async throws {
      folder = try BundleFolder(url: try bundleURL())
      let cache = FileManager.default.temporaryDirectory
      let units = ProcessInfo.processInfo.environment["QWEN_COMPUTE_UNITS"] ?? "all"
      engine = try await EngineFactory.open(folder, computeUnits: units, cacheDirectory: cache)
    }

    /// One 128-token prompt + 64 decoded tokens per iteration, measured 5 times after XCTest's own warm-up.
    func testDecodeThroughput() throws {
      let engine = self.engine!
      let prompt = BenchmarkRunner.prompt(
        length: 128, vocab: engine.planner.manifest.vocabSize, seed: 0, avoid: Set(engine.planner.manifest.stopIDs))
      let options = XCTMeasureOptions()
      options.iterationCount = 5
      measure(metrics: [XCTClockMetric(), XCTCPUMetric(), XCTMemoryMetric()], options: options) {
        let session = GenerationSession(engine: engine)
        var sampler = Sampler(.greedy)
        _ = try? session.generate(prompt, maxNewTokens: 64, sampler: &sampler, stopIDs: [])
      }
    }

    /// The full benchmark with cool-downs; its JSON is attached to the result.
    func testBenchmarkReport() throws {
      let runner = BenchmarkRunner(engine: engine, probe: SystemDeviceProbe())
      let settings = try BenchSettings(
        promptLengths: [64, 256], generateTokens: 64, runs: 3, warmup: 1, promptSource: "SplitMix64, seed 0 + length")
      let report = try runner.run(
        .init(settings: settings, coolDownTimeout: 180), bundlePath: folder.url.lastPathComponent,
        appVersion: "devicefarm", loadMs: nil)
      let attachment = XCTAttachment(data: try report.data(), uniformTypeIdentifier: "public.json")
      attachment.name = "bench.json"
      attachment.lifetime = .keepAlways
      add(attachment)
    }
  }
#endif
