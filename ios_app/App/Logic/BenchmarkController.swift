import Foundation
import QwenMobileKit

/// The Benchmark screen's state: settings, progress, the last report (JSON to share, numbers to chart).
public final class BenchmarkController {
  /// Called after any published property changes; the SwiftUI layer turns it into view updates (Observation
  /// is not used: Debian's libswiftObservation does not link, and these classes must build on Linux).
  public var onChange: (() -> Void)?

  public var promptLengths: [Int] = [64, 256] { didSet { onChange?() } }
  public var generateTokens = 64 { didSet { onChange?() } }
  public var runs = 5 { didSet { onChange?() } }
  public var warmup = 1 { didSet { onChange?() } }
  public var coolDownTimeout: Double = 300 { didSet { onChange?() } }
  public private(set) var status = "idle" { didSet { onChange?() } }
  public private(set) var report: BenchReport? { didSet { onChange?() } }
  public private(set) var reportJSON: Data? { didSet { onChange?() } }
  public private(set) var lastError: String? { didSet { onChange?() } }
  var cancelled = false

  public init() {}

  public func cancel() { cancelled = true }

  /// Runs the benchmark (blocking: call from a background task) and keeps the report.
  public func run(
    engine: InferenceEngine, probe: DeviceProbe, bundlePath: String?, appVersion: String, loadMs: Double?,
    computeUnits: String?, onStatus: ((String) -> Void)? = nil
  ) {
    cancelled = false
    lastError = nil
    do {
      let settings = try BenchSettings(
        promptLengths: promptLengths, generateTokens: generateTokens, runs: runs, warmup: warmup,
        computeUnits: computeUnits, promptSource: "SplitMix64 token ids, seed 0 + prompt length")
      let runner = BenchmarkRunner(engine: engine, probe: probe)
      runner.isCancelled = { [weak self] in self?.cancelled ?? true }
      runner.onEvent = { [weak self] event in
        let text: String
        switch event {
        case .coolingDown(let thermal): text = "cooling down (thermal state \(thermal))"
        case .run(let p, let i, let n, let warm): text = "\(warm ? "warm-up" : "run") \(i + 1)/\(n), prompt \(p)"
        case .finished: text = "done"
        }
        self?.status = text
        onStatus?(text)
      }
      let report = try runner.run(
        BenchmarkRunner.Options(settings: settings, coolDownTimeout: coolDownTimeout), bundlePath: bundlePath,
        appVersion: appVersion, loadMs: loadMs)
      self.report = report
      reportJSON = try report.data()
    } catch {
      lastError = "\(error)"
      status = "failed"
    }
  }

  /// Median decode tok/s per prompt length, for the chart.
  public var chartPoints: [(promptTokens: Int, decodeTokS: Double, prefillTokS: Double)] {
    guard let report else { return [] }
    return report.settings.promptLengths.compactMap { length in
      guard let runs = report.samples[length], let prefill = try? Stats(runs.map(\.prefillTokS)) else { return nil }
      let decode = (try? Stats(runs.compactMap(\.decodeTokS)))?.median ?? 0
      return (length, decode, prefill.median)
    }
  }
}
