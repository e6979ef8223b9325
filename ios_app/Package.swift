// swift-tools-version:6.0
// QwenMobileKit: everything of the iOS sample app that is neither UI nor an Apple SDK call (manifest, sha256,
// tokenizer, chat template, sampling, statistics, bench JSON, engine plans), plus the Core ML and ExecuTorch engines.
//
// On Linux (ios_app/check.sh builds this in a Debian trixie chroot) the Apple SDK and ExecuTorch are absent, so
// three stub targets named like the real modules (CoreML, ExecuTorch, UIKit) declare exactly the API the engines and
// the app logic call: `#if canImport(CoreML)` is then true on Linux too, and the real engine code type-checks here
// against the declarations. On Apple platforms the stubs are not part of the package; CoreML and UIKit come from the
// SDK and ExecuTorch from its Swift package (see README.md, "ExecuTorch on iOS").
import PackageDescription

#if os(Linux)
  let stubTargets: [Target] = [
    .target(name: "CoreML", path: "Stubs/CoreML"),
    .target(name: "ExecuTorch", path: "Stubs/ExecuTorch"),
    .target(name: "UIKit", path: "Stubs/UIKit"),
  ]
  let engineDependencies: [Target.Dependency] = ["QwenMobileKit", "CoreML", "ExecuTorch", "UIKit"]
  let packageDependencies: [Package.Dependency] = []
#else
  let stubTargets: [Target] = []
  let engineDependencies: [Target.Dependency] = [
    "QwenMobileKit",
    .product(name: "executorch", package: "executorch"),
    .product(name: "backend_xnnpack", package: "executorch"),
    .product(name: "kernels_optimized", package: "executorch"),
    .product(name: "kernels_quantized", package: "executorch"),
  ]
  // ExecuTorch's prebuilt Swift package; the branch names the release (swiftpm-<version>).
  let packageDependencies: [Package.Dependency] = [
    .package(url: "https://github.com/pytorch/executorch.git", branch: "swiftpm-1.0.0")
  ]
#endif

let package = Package(
  name: "QwenMobileKit",
  platforms: [.iOS(.v18), .macOS(.v15)],
  products: [
    .library(name: "QwenMobileKit", targets: ["QwenMobileKit"]),
    .library(name: "QwenMobileEngines", targets: ["QwenMobileEngines"]),
    .library(name: "QwenMobileAppLogic", targets: ["QwenMobileAppLogic"]),
  ],
  dependencies: packageDependencies,
  targets: stubTargets + [
    .target(name: "QwenMobileKit", path: "Sources/QwenMobileKit"),
    .target(name: "QwenMobileEngines", dependencies: engineDependencies, path: "Sources/QwenMobileEngines"),
    // The app's logic (bundle library, chat and benchmark controllers): everything of the app but its SwiftUI views,
    // which live in App/Views and are syntax-checked only (no SwiftUI on Linux).
    .target(name: "QwenMobileAppLogic", dependencies: ["QwenMobileEngines"], path: "App/Logic"),
    .testTarget(name: "QwenMobileKitTests", dependencies: ["QwenMobileKit"], path: "Tests/QwenMobileKitTests"),
    .testTarget(
      name: "QwenMobileEnginesTests", dependencies: ["QwenMobileEngines", "QwenMobileAppLogic"],
      path: "Tests/QwenMobileEnginesTests"),
  ],
  // Swift 5 mode: the engines hand MLModel/Module objects between the app's tasks; Swift 6's strict Sendable
  // checking would need @unchecked annotations on Apple types the Linux stubs cannot vouch for.
  swiftLanguageModes: [.v5]
)
