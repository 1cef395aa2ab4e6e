// The export button: the results shown, as a training set (POST /api/export, README: Export): the same query, as
// many results as are shown, downloaded as the zip the server streams (kohya's layout: images, .txt captions,
// results.parquet).

const button = document.getElementById("export");

// shown(): {body, count} of the results shown (the query as /api/search took it, and how many), or null;
// say(text, isError): the page's status line.
export function setUpExport(shown, say) {
  button.addEventListener("click", async () => {
    const {body, count} = shown() || {};
    if (!count) return;
    button.disabled = true;
    say(`exporting ${count} results...`, false);
    try {
      const {cards, ...query} = body;  // the export has no cards
      const response = await fetch("/api/export", {method: "POST", headers: {"Content-Type": "application/json"},
                                                   body: JSON.stringify({...query, offset: 0, num_results: count})});
      if (!response.ok) {
        say((await response.json()).error || response.statusText, true);
        return;
      }
      const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "")?.[1] || "export.zip";
      const link = document.createElement("a");
      link.href = URL.createObjectURL(await response.blob());
      link.download = name;
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
      say(`exported ${count} results: ${name}`, false);
    } catch (error) {
      say(`export failed: ${error.message}`, true);
    } finally {
      button.disabled = false;
    }
  });
}

// Offered while there are results to export.
export function offerExport(count) {
  button.hidden = !count;
  button.textContent = `Export ${count} as a training set`;
}
