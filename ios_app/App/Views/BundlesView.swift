#if canImport(SwiftUI)
  import QwenMobileAppLogic
  import QwenMobileKit
  import SwiftUI
  import UniformTypeIdentifiers

  /// Bundles in Documents/Bundles: imported through the Files app (a folder picked in the document picker) or
  /// copied with `xcrun devicectl device copy to --domain-type appDataContainer` (README).
  struct BundlesView: View {
    @EnvironmentObject var state: AppState
    @State private var importing = false
    @State private var message = ""

    var body: some View {
      NavigationStack {
        List {
          Section("Compute units (Core ML)") {
            Picker("Compute units", selection: $state.computeUnits) {
              ForEach(ComputeUnitsChoice.allCases, id: \.rawValue) { Text($0.rawValue).tag($0.rawValue) }
            }
          }
          Section("Bundles") {
            ForEach(state.library.model.entries) { entry in
              Button {
                Task { await state.open(entry) }
              } label: {
                VStack(alignment: .leading) {
                  Text(entry.modelID).font(.headline)
                  Text(
                    "\(entry.recipe) · \(entry.qlinear) · \(ByteCountFormatter.string(fromByteCount: Int64(entry.bytes), countStyle: .file))"
                  )
                  .font(.caption)
                  if let problem = entry.problem { Text(problem).font(.caption).foregroundStyle(.red) }
                }
              }
            }
            .onDelete { rows in
              for row in rows { try? state.library.model.delete(state.library.model.entries[row]) }
            }
          }
          if !state.status.isEmpty || !message.isEmpty {
            Section("Status") { Text(message.isEmpty ? state.status : message).font(.footnote) }
          }
        }
        .navigationTitle("Bundles")
        .toolbar {
          Button("Import") { importing = true }
          Button("Refresh") { state.library.model.refresh() }
        }
        .fileImporter(isPresented: $importing, allowedContentTypes: [.folder]) { result in
          switch result {
          case .success(let url):
            message = "copying and verifying \(url.lastPathComponent)…"
            Task.detached {
              do {
                try await state.library.model.importBundle(from: url)
                await MainActor.run { message = "imported \(url.lastPathComponent)" }
              } catch {
                await MainActor.run { message = "\(error)" }
              }
            }
          case .failure(let error):
            message = "\(error)"
          }
        }
      }
    }
  }
#endif
