#if canImport(SwiftUI)
  import Charts
  import QwenMobileAppLogic
  import QwenMobileKit
  import SwiftUI
  import UIKit

  /// Benchmark: warm-ups, runs, a cool-down to the nominal thermal state before each run, battery and thermal
  /// readings, the result as bench-schema JSON (share sheet) and a chart of median prefill/decode tok/s.
  struct BenchmarkView: View {
    @EnvironmentObject var state: AppState
    @StateObject private var bench = Live(BenchmarkController()) { model, notify in model.onChange = notify }
    private let probe = SystemDeviceProbe()

    var body: some View {
      NavigationStack {
        Form {
          Section("Settings") {
            Stepper(
              "Runs: \(bench.model.runs)", value: Binding(get: { bench.model.runs }, set: { bench.model.runs = $0 }),
              in: 1...20)
            Stepper(
              "Warm-ups: \(bench.model.warmup)",
              value: Binding(get: { bench.model.warmup }, set: { bench.model.warmup = $0 }), in: 0...5)
            Stepper(
              "Tokens: \(bench.model.generateTokens)",
              value: Binding(get: { bench.model.generateTokens }, set: { bench.model.generateTokens = $0 }),
              in: 1...512, step: 16)
          }
          Section("Device") {
            let s = probe.snapshot()
            Text("Battery \(s.batteryPct.map { String(format: "%.0f %%", $0) } ?? "unknown") (\(s.batteryState))")
            Text("Thermal state: \(s.thermal)\(s.lowPowerMode ? " · Low Power Mode on" : "")")
          }
          Section("Run") {
            Button("Start") { start() }.disabled(state.engine == nil)
            Button("Cancel") { bench.model.cancel() }
            Text(bench.model.status).font(.footnote)
            if let error = bench.model.lastError { Text(error).foregroundStyle(.red) }
          }
          if !bench.model.chartPoints.isEmpty {
            Section("Median tok/s") {
              Chart(bench.model.chartPoints, id: \.promptTokens) { point in
                BarMark(x: .value("prompt", "\(point.promptTokens) decode"), y: .value("tok/s", point.decodeTokS))
                BarMark(x: .value("prompt", "\(point.promptTokens) prefill"), y: .value("tok/s", point.prefillTokS))
              }
              .frame(height: 200)
            }
          }
          if let thermal = bench.model.report?.energy?.thermal, thermal.count > 1 {
            Section("Thermal state during the run") {
              Chart(Array(thermal.enumerated()), id: \.offset) { item in
                LineMark(x: .value("s", item.element.seconds), y: .value("state", Self.level(item.element.value)))
                  .interpolationMethod(.stepEnd)
              }
              .chartYScale(domain: 0...3)
              .chartYAxis {
                AxisMarks(values: [0, 1, 2, 3]) { value in
                  AxisValueLabel { Text(["nominal", "fair", "serious", "critical"][value.as(Int.self) ?? 0]) }
                }
              }
              .frame(height: 140)
            }
          }
          if let data = bench.model.reportJSON, let text = String(data: data, encoding: .utf8) {
            Section("Result") {
              ShareLink(item: text, preview: SharePreview("qwen-mobile bench.json"))
            }
          }
        }
        .navigationTitle("Benchmark")
      }
    }

    static func level(_ state: String) -> Int {
      ["nominal": 0, "fair": 1, "serious": 2, "critical": 3][state] ?? 0
    }

    func start() {
      guard let engine = state.engine else { return }
      let path = state.bundle?.url.lastPathComponent
      let units = state.bundle?.manifest.isCoreMLPackage == true ? state.computeUnits : nil
      let loadMs = state.loadMs
      let version = Bundle.main.object(forInfoDictionaryKey: "CFBundleShortVersionString") as? String ?? "0"
      UIApplication.shared.isIdleTimerDisabled = true
      Task.detached {
        bench.model.run(
          engine: engine, probe: probe, bundlePath: path, appVersion: version, loadMs: loadMs,
          computeUnits: units)
        await MainActor.run { UIApplication.shared.isIdleTimerDisabled = false }
      }
    }
  }
#endif
