#if canImport(SwiftUI)
  import CoreGraphics
  import PhotosUI
  import QwenMobileAppLogic
  import QwenMobileKit
  import SwiftUI

  /// Chat with streaming text and tok/s per reply; thinking on/off; the state is kept between turns; for a bundle
  /// with a `vision` section (either engine), a photo from the library goes with the next prompt.
  struct ChatView: View {
    @EnvironmentObject var state: AppState
    @State private var chat: Live<ChatController>?
    @State private var thinking = false

    var body: some View {
      NavigationStack {
        VStack {
          if let chat {
            ChatPanel(chat: chat).id(ObjectIdentifier(chat))
          } else {
            Text("Open a bundle on the Bundles tab.").foregroundStyle(.secondary)
          }
        }
        .padding()
        .navigationTitle("Chat")
        .toolbar {
          Toggle("Thinking", isOn: $thinking)
          Button("New chat") { chat?.model.reset() }
        }
        .onChange(of: thinking) { _, value in chat?.model.thinking = value }
        .onChange(of: state.bundle?.url) { _, _ in makeChat() }
        .onAppear { makeChat() }
      }
    }

    func makeChat() {
      guard let engine = state.engine, let bundle = state.bundle, let file = bundle.manifest.tokenizerFile,
        let tokenizer = try? BPETokenizer(url: bundle.file(file))
      else { return }
      thinking = ChatTemplate.thinkingDefault(
        size: bundle.manifest.modelSize, manifest: bundle.manifest.thinkingDefault)
      chat = Live(ChatController(engine: engine, tokenizer: tokenizer, thinking: thinking)) { model, notify in
        model.onChange = notify
      }
    }
  }

  /// The transcript, the image row and the input of one chat; observes the controller so streamed text, the
  /// attachment line and the stats redraw as they change.
  struct ChatPanel: View {
    @ObservedObject var chat: Live<ChatController>
    @State private var input = ""
    @State private var photoItem: PhotosPickerItem?
    @State private var thumbnail: CGImage?
    @State private var imageError: String?
    @State private var decoding = false

    var body: some View {
      ScrollView {
        ForEach(chat.model.messages) { message in
          VStack(alignment: message.role == "user" ? .trailing : .leading) {
            if let image = message.image { Text(image).font(.caption).foregroundStyle(.secondary) }
            Text(message.text).textSelection(.enabled)
            if let stats = message.stats { Text(stats).font(.caption2).foregroundStyle(.secondary) }
          }
          .frame(maxWidth: .infinity, alignment: message.role == "user" ? .trailing : .leading)
          .padding(4)
        }
      }
      if let error = chat.model.lastError { Text(error).font(.caption).foregroundStyle(.red) }
      HStack {
        PhotosPicker(selection: $photoItem, matching: .images) {
          Label("Image", systemImage: "photo")
        }
        .disabled(chat.model.imagesUnavailableReason != nil || chat.model.isGenerating || decoding)
        if let thumbnail, chat.model.attachment != nil {
          Image(decorative: thumbnail, scale: 1).resizable().scaledToFit().frame(width: 48, height: 48)
        }
        Text(decoding ? "decoding the image…" : imageError ?? chat.model.imageLine)
          .font(.caption)
          .foregroundStyle(imageError == nil ? Color.secondary : Color.red)
        Spacer()
        if chat.model.attachment != nil {
          Button("Clear") { chat.model.clearAttachment() }
        }
      }
      .onChange(of: photoItem) { _, item in load(item) }
      HStack {
        TextField("Message", text: $input).textFieldStyle(.roundedBorder)
        Button(chat.model.isGenerating ? "Stop" : "Send") {
          if chat.model.isGenerating {
            chat.model.stop()
          } else {
            let text = input
            input = ""
            imageError = nil
            let model = chat.model
            Task.detached { try? model.send(text) }
          }
        }
      }
    }

    /// Loads the picked photo's bytes, decodes and scales it off the main thread, attaches it to the next turn.
    func load(_ item: PhotosPickerItem?) {
      guard let item, let vision = chat.model.vision else { return }
      photoItem = nil  // so that picking the same photo again is a change too
      imageError = nil
      decoding = true
      Task {
        do {
          guard let data = try await item.loadTransferable(type: Data.self) else {
            throw BundleError("image: the photo library returned no data for the picked item")
          }
          let (attachment, decoded) = try await Task.detached {
            try PhotoDecoder.attachment(from: data, vision: vision)
          }.value
          try chat.model.attach(attachment)
          thumbnail = decoded
        } catch {
          imageError = "\(error)"
        }
        decoding = false
      }
    }
  }
#endif
