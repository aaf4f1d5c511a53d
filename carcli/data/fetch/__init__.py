"""Getting data sets onto disk: the mirror table, downloads, safe extraction, imports and registration.

Everything lands under the data root (`carcli.paths.data_home`), one folder per data set, each with
a `.carcli-dataset.json` marker:

- `stanford-cars/` holds Stanford Cars in exactly the layout `torchvision.datasets.StanfordCars(root)`
  reads (`stanford_cars/{cars_train, cars_test, cars_test_annos_withlabels.mat, devkit/*.mat}`),
  whatever it came from: a mirror (the Hugging Face parquet conversion, an archive in the devkit
  layout), or local archives, folders and parquet files (`--from`).
- `NAME/` holds a registered class-folder or CSV data set as `train|val|test/<class>/` folders.
- `NAME-<N>px/` is a copy with the shorter image side at N px (`--prepare-size`).
- `demo/` is the generated demo set (`carcli.data.demo`).

Downloads resume from `*.part` files (HTTP Range), retry timeouts, dropped connections and 5xx
answers with exponential backoff, and check each file's SHA-256 against the table (else against the
`X-Linked-Etag` header Hugging Face sends with LFS files); a mismatch deletes the partial file.
Archives are extracted only after every member is checked (no absolute paths, no `..`, no links out,
a total size limit), into a temporary folder beside the target that is renamed into place only when
the data set is complete; every image is decoded once and unreadable ones are excluded and listed in
`unreadable.txt`. Nothing here prints: progress goes to a carcli.progress `Reporter`.

Reading order, from the entry point down:

- this module: `fetch` (one request -> one data set, plus its --prepare-size copy);
- `request`: `FetchRequest` and the checks that refuse a request that does not fit;
- `stanford_cars`: --from imports and the mirror-by-mirror download;
- `register`: a class-folder or CSV set registered under a name, the demo set generated;
- `prepare`: the --prepare-size copy;
- `catalog`: `list_datasets` for `--list`;
- `build`: a data set built in a staging folder, images checked, marker written, renamed into place;
- `assemble`: Stanford Cars in the devkit layout from a devkit or class folders, `parquet` from parquet files
  (the devkit .mat files written by `carcli.data.devkit`);
- `sources`: what the sources hold (archives extracted, folders walked);
- `mirrors`: the mirror table; `download`: resumable, retried, checked HTTP downloads;
- `archives`: safe extraction.
"""

from __future__ import annotations

from collections.abc import Callable

from carcli.data import demo
from carcli.data.fetch.build import FetchResult
from carcli.data.fetch.catalog import DataSetInfo, list_datasets
from carcli.data.fetch.download import Network
from carcli.data.fetch.prepare import prepare_copy
from carcli.data.fetch.register import fetch_demo, register_folder
from carcli.data.fetch.request import FOLDER, STANFORD_CARS, FetchRequest, check_request
from carcli.data.fetch.stanford_cars import fetch_stanford_cars
from carcli.progress import Reporter, SilentReporter

__all__ = ["DataSetInfo", "FetchRequest", "FetchResult", "Network", "fetch", "list_datasets"]


def fetch(request: FetchRequest, reporter: Reporter | None = None) -> FetchResult:
    """Get the named data set into the data root (download, import, register or generate), ready to train on."""
    reporter = reporter or SilentReporter()
    check_request(request)
    handlers: dict[str, Callable[[FetchRequest, Reporter], FetchResult]] = {
        STANFORD_CARS: fetch_stanford_cars,
        FOLDER: register_folder,
        demo.DEMO_NAME: fetch_demo,
    }
    result = handlers[request.name](request, reporter)  # type: ignore[index]
    if request.prepare_size is not None:
        result.prepared = prepare_copy(result, request.prepare_size, reporter)
    return result
