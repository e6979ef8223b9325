#if canImport(SwiftUI)
  import QwenMobileAppLogic
  import QwenMobileEngines
  import QwenMobileKit
  import SwiftUI

  /// Bridges a logic class's `onChange` callback to SwiftUI (the logic classes build on Linux, where neither
  /// Combine nor a linkable Observation exist).
  final class Live<Model: AnyObject>: ObservableObject {
    let model: Model
    init(_ model: Model, hook: (Model, @escaping () -> Void) -> Void) {
      self.model = model
      hook(model) { [weak self] in
        DispatchQueue.main.async { self?.objectWillChange.send() }
      }
    }
  }

  /// The app's shared state: the bundle library and the engine of the bundle in use.
  @MainActor
  final class AppState: ObservableObject {
    let library: Live<BundleLibrary>
    @Published var engine: InferenceEngine?
    @Published var bundle: BundleFolder?
    @Published var loadMs: Double?
    @Published var computeUnits = "all"
    @Published var status = ""

    init() {
      let root = (try? BundleLibrary.defaultRoot()) ?? FileManager.default.temporaryDirectory
      library = Live(BundleLibrary(root: root)) { model, notify in model.onChange = notify }
      library.model.refresh()
    }

    func open(_ entry: BundleLibrary.Entry) async {
      status = "verifying \(entry.modelID)…"
      do {
        let start = Date()
        let folder = try await Task.detached { try BundleFolder(url: entry.url) }.value
        let cache = try FileManager.default.url(
          for: .cachesDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        engine = try await EngineFactory.open(folder, computeUnits: computeUnits, cacheDirectory: cache)
        bundle = folder
        loadMs = Date().timeIntervalSince(start) * 1e3
        status = "\(entry.modelID) ready (\(engine?.runtimeDescription ?? ""))"
      } catch {
        status = "\(error)"
      }
    }
  }

  @main
  struct QwenMobileApp: App {
    @StateObject private var state = AppState()

    var body: some Scene {
      WindowGroup {
        TabView {
          BundlesView().tabItem { Label("Bundles", systemImage: "shippingbox") }
          ChatView().tabItem { Label("Chat", systemImage: "bubble.left.and.bubble.right") }
          BenchmarkView().tabItem { Label("Benchmark", systemImage: "speedometer") }
        }
        .environmentObject(state)
      }
    }
  }
#endif
