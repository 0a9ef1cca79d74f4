// The dslc extension: the TextMate grammar (package.json) and a client of the dslc language server.
// The server is `dslc lsp` over stdio (settings: dslc.server.path and dslc.server.args); it is restarted
// when they change. Other dslc.* settings reach the server as initialization options and on change.
"use strict";

const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client = null;

function settings() {
  const config = vscode.workspace.getConfiguration("dslc");
  return {
    command: config.get("server.path", "dslc"),
    args: config.get("server.args", ["lsp"]),
    options: {
      inlayHints: config.get("inlayHints.enabled", true),
      debounceMs: config.get("debounceMs", 25),
    },
  };
}

async function start(context) {
  const { command, args, options } = settings();
  if (!command) {
    return; // highlighting only
  }
  const server = { command, args, options: { cwd: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath } };
  client = new LanguageClient(
    "dslc",
    "dslc language server",
    { run: server, debug: server },
    {
      documentSelector: [
        { scheme: "file", language: "dslc" },
        { scheme: "untitled", language: "dslc" },
      ],
      initializationOptions: options,
      synchronize: { configurationSection: "dslc" },
    },
  );
  try {
    await client.start();
  } catch (error) {
    client = null;
    vscode.window.showErrorMessage(
      `dslc: could not start "${command} ${args.join(" ")}" (${error.message}). ` +
        "Set dslc.server.path to the dslc executable of an environment with the lsp extra: pip install 'dslc[lsp]'.",
    );
  }
}

async function stop() {
  if (client) {
    const running = client;
    client = null;
    await running.stop();
  }
}

async function activate(context) {
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (event.affectsConfiguration("dslc.server")) {
        await stop();
        await start(context);
      }
    }),
    vscode.commands.registerCommand("dslc.restartServer", async () => {
      await stop();
      await start(context);
    }),
  );
  await start(context);
}

function deactivate() {
  return stop();
}

module.exports = { activate, deactivate };
