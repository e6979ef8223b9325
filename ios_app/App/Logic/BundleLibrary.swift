import Foundation
import QwenMobileKit

/// The bundles on this device: folders under Documents/Bundles, each with a manifest.json. They arrive through the
/// Files app (the document picker hands over a folder) or `xcrun devicectl device copy to ... --domain-type
/// appDataContainer` into Documents/Bundles; both end up here.
public final class BundleLibrary {
  /// Called after any published property changes; the SwiftUI layer turns it into view updates (Observation
  /// is not used: Debian's libswiftObservation does not link, and these classes must build on Linux).
  public var onChange: (() -> Void)?

  public struct Entry: Identifiable, Equatable {
    public var id: String { url.path }
    public let url: URL
    public let modelID: String
    public let recipe: String
    public let qlinear: String
    public let bytes: UInt64
    public let problem: String?  // why the manifest cannot be read, shown instead of hiding the folder
  }

  public let root: URL
  public private(set) var entries: [Entry] = [] { didSet { onChange?() } }

  public init(root: URL) {
    self.root = root
  }

  /// Documents/Bundles of the app container.
  public static func defaultRoot() throws -> URL {
    let docs = try FileManager.default.url(
      for: .documentDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
    return docs.appendingPathComponent("Bundles")
  }

  public func refresh() {
    let fm = FileManager.default
    try? fm.createDirectory(at: root, withIntermediateDirectories: true)
    let children = (try? fm.contentsOfDirectory(at: root, includingPropertiesForKeys: nil)) ?? []
    entries = children.filter { !$0.lastPathComponent.hasPrefix(".") }.sorted { $0.path < $1.path }.map { url in
      do {
        let m = try BundleFolder(url: url, verifyHashes: false).manifest
        return Entry(
          url: url, modelID: m.modelID, recipe: m.recipeName, qlinear: m.qlinear, bytes: m.totalBytes,
          problem: nil)
      } catch {
        return Entry(
          url: url, modelID: url.lastPathComponent, recipe: "?", qlinear: "?", bytes: 0,
          problem: "\(error)")
      }
    }
  }

  /// Copies a bundle folder in under a temporary name, verifies every file's sha256, then renames it into place: a
  /// cancelled or corrupt copy never shows up as a bundle.
  @discardableResult
  public func importBundle(from source: URL, progress: ((String, Int, Int) -> Void)? = nil) throws -> URL {
    let fm = FileManager.default
    #if canImport(Darwin)
      let scoped = source.startAccessingSecurityScopedResource()
      defer { if scoped { source.stopAccessingSecurityScopedResource() } }
    #endif
    try fm.createDirectory(at: root, withIntermediateDirectories: true)
    let staging = root.appendingPathComponent(".importing-\(UUID().uuidString)")
    do {
      try fm.copyItem(at: source, to: staging)
      let bundle = try BundleFolder(url: staging, verifyHashes: true, progress: progress)
      let name = source.lastPathComponent.isEmpty ? bundle.manifest.modelID : source.lastPathComponent
      let target = root.appendingPathComponent(name)
      if fm.fileExists(atPath: target.path) {
        throw BundleError("\(target.lastPathComponent) already exists in the library; delete it first")
      }
      try fm.moveItem(at: staging, to: target)
      refresh()
      return target
    } catch {
      try? fm.removeItem(at: staging)
      throw error
    }
  }

  public func delete(_ entry: Entry) throws {
    try FileManager.default.removeItem(at: entry.url)
    refresh()
  }
}
