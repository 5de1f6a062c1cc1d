//! What a chat is, apart from any wire format: messages with their tool calls, the tools a
//! request offers, the model's own chat template ([`template`]) and the tool calls found in
//! what the model wrote ([`tools`]). Pure: the OpenAI and Ollama front ends in `api/`
//! translate into these types, and everything here is tested on values.

pub mod template;
pub mod tools;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ModelKind, ModelSource};

/// One message of a conversation, as templates see it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: Option<String>,
    /// An assistant message's calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `tool` message: the function's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A function call the model made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (OpenAI's `function.arguments`).
    pub arguments: String,
}

/// A function a request offers the model (OpenAI's `{"type": "function", "function": …}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments object.
    #[serde(default = "empty_object_schema")]
    pub parameters: serde_json::Value,
}

fn empty_object_schema() -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// `tool_choice`: whether and which tool the model must call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (the default when tools are given).
    #[default]
    Auto,
    /// No tool call; the tools are still shown to the template.
    None,
    /// At least one call, of any tool.
    Required,
    /// A call of this function.
    Function(String),
}

/// The chat template of every configured LLM whose file carries one, read once at start.
#[derive(Default)]
pub struct Templates(HashMap<String, template::ChatTemplate>);

impl Templates {
    /// Reads each LLM's template from its GGUF. A model without one (or with one that does
    /// not compile) falls back to llama.cpp's built-in templates, and cannot take tools.
    pub fn load(config: &Config) -> Templates {
        let mut map = HashMap::new();
        for m in config.models.iter().filter(|m| m.kind == ModelKind::Llm) {
            let ModelSource::File { path } = &m.source else {
                continue;
            };
            match template::ChatTemplate::from_gguf(path) {
                Ok(Some(t)) => {
                    tracing::debug!(model = %m.name, tools = t.supports_tools(), "chat template from the model file");
                    map.insert(m.name.clone(), t);
                }
                Ok(None) => tracing::debug!(model = %m.name, "no chat template in the model file"),
                Err(e) => tracing::warn!(model = %m.name, "the model's chat template is not usable: {e}"),
            }
        }
        Templates(map)
    }

    pub fn get(&self, model: &str) -> Option<&template::ChatTemplate> {
        self.0.get(model)
    }
}
