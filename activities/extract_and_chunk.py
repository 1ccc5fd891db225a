"""Extract and chunk in one step, for a small file whose text is read in milliseconds.

The workflow runs it as one local activity for a text, Markdown or HTML file (workflows/ingest.py,
`_quick_to_extract`): the text goes from the reader to the chunker in memory instead of through
`text.json`, and a burst of uploads no longer queues every file's extraction ahead of the first
file's chunking on the worker's few local-activity slots, so the first embed batch starts
sooner.
"""

from __future__ import annotations

from temporalio import activity

from activities.chunk import ChunkActivities
from activities.extract import ExtractActivities
from workflows.types import EXTRACT_AND_CHUNK, ChunkResult, IngestTask


class ExtractAndChunkActivities:
    def __init__(self, extract: ExtractActivities, chunk: ChunkActivities) -> None:
        self.extract = extract
        self.chunk = chunk

    @activity.defn(name=EXTRACT_AND_CHUNK)
    def extract_and_chunk(self, task: IngestTask) -> ChunkResult:
        """Read the original and write its shards and manifest, as `extract` then `chunk`."""
        extracted = self.extract.read(task)
        return self.chunk.write_shards(task, extracted.text, extracted.page_starts)
