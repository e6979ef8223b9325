package org.qwenmobile.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** ChatML text and nano ids against runtime/chat.py on the shared vectors. */
public class ChatTemplateVectorsTest {
    @Test
    public void rendersLikeThePythonTemplate() throws Exception {
        Map<String, Object> doc = TestFiles.json("tests/apps/vectors/chat_template.json");
        BpeTokenizer nano = BpeTokenizer.fromFile(TestFiles.file("models/nano/tokenizer.json"));
        List<Object> cases = Json.arr(doc.get("cases"), "cases");
        assertEquals(8, cases.size());
        int i = 0;
        for (Object c : cases) {
            Map<String, Object> k = Json.obj(c, "case");
            List<ChatTemplate.Message> messages = new ArrayList<ChatTemplate.Message>();
            for (Object m : Json.arr(k.get("messages"), "messages")) {
                Map<String, Object> mm = Json.obj(m, "message");
                messages.add(new ChatTemplate.Message((String) mm.get("role"), (String) mm.get("content")));
            }
            ChatTemplate t = new ChatTemplate((Boolean) k.get("enable_thinking"));
            String text = t.render(messages, (Boolean) k.get("add_generation_prompt"));
            assertEquals("case " + i, k.get("text"), text);
            assertArrayEquals("case " + i, Json.intArray(k.get("ids_nano"), "ids_nano"), nano.encode(text));
            i++;
        }
    }

    @Test
    public void userTurnIsTurnPlusGenerationPrompt() {
        ChatTemplate off = new ChatTemplate(false);
        assertEquals("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", off.user("hi"));
        assertEquals("<|im_start|>assistant\n<think>\n", new ChatTemplate(true).generationPrompt());
        assertEquals("<|im_end|>\n", ChatTemplate.closeAssistant(false));
    }
}
