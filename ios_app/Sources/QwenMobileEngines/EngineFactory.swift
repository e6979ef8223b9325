import Foundation
import QwenMobileKit

/// Opens a verified bundle with the engine its recipe needs.
public enum EngineFactory {
  public static func open(_ bundle: BundleFolder, computeUnits: String = "all", cacheDirectory: URL) async throws
    -> InferenceEngine
  {
    switch bundle.manifest.recipeName {
    case "coreml":
      #if canImport(CoreML)
        guard let units = ComputeUnitsChoice(rawValue: computeUnits) else {
          throw BundleError("compute units '\(computeUnits)': one of \(ComputeUnitsChoice.allCases.map(\.rawValue))")
        }
        return try await CoreMLEngine.load(bundle: bundle, computeUnits: units, cacheDirectory: cacheDirectory)
      #else
        throw BundleError("this build has no Core ML")
      #endif
    default:
      #if canImport(ExecuTorch)
        return try ExecuTorchEngine(bundle: bundle)
      #else
        throw BundleError("this build has no ExecuTorch")
      #endif
    }
  }
}
