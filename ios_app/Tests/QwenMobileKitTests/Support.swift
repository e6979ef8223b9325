import Foundation
import XCTest

@testable import QwenMobileKit

/// The repository root: QWEN_MOBILE_REPO when set (check.sh sets it), else three folders above this file
/// (ios_app/Tests/QwenMobileKitTests/).
let repoRoot: URL = {
  if let env = ProcessInfo.processInfo.environment["QWEN_MOBILE_REPO"], !env.isEmpty {
    return URL(fileURLWithPath: env)
  }
  return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()
}()

let vectorsDir = repoRoot.appendingPathComponent("tests/apps/vectors")

/// A shared vector file; a missing one fails the test (the vectors are committed, never optional).
func loadVector(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> JSONNode {
  let url = vectorsDir.appendingPathComponent(name)
  guard FileManager.default.fileExists(atPath: url.path) else {
    XCTFail(
      "missing shared vector \(url.path) (tests/apps/make_vectors.py / make_engine_plans.py)", file: file, line: line)
    throw BundleError("missing \(name)")
  }
  return try JSONNode.load(url)
}

/// The field path of a BundleError message "source: field 'a/b': ...".
func fieldOf(_ error: Error) -> String? {
  guard let e = error as? BundleError, let start = e.message.range(of: "field '") else { return nil }
  let rest = e.message[start.upperBound...]
  guard let end = rest.firstIndex(of: "'") else { return nil }
  return String(rest[..<end])
}
