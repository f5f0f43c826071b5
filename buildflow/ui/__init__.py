"""A web page for a running app: upload images, watch rows, metrics and dead letters live.

    buildflow run main:app --ui          # prints UI: http://127.0.0.1:8765/

From Python::

    from buildflow.ui import UiConfig, UiServer, UiState

    state = UiState()
    with UiServer(bound, state, UiConfig(port=0)) as ui:
        print(ui.url)
        InProcessRuntime().run(bound, RunOptions(), on_progress=state.update)

The server (FastAPI on uvicorn, in a thread of the ``run`` process) reads the run's
metrics from :class:`UiState`, which the runtime's ``on_progress`` callback feeds, and the
results and dead letters through the sink providers' ``query()``. Uploads go into the
processor's source the way ``buildflow upload`` / ``buildflow produce`` put them there.
Needs the ``ui`` extra: ``pip install 'buildflow[ui]'``.
"""

from buildflow.ui.config import UiConfig as UiConfig
from buildflow.ui.server import UiServer as UiServer
from buildflow.ui.state import UiState as UiState

__all__ = ["UiConfig", "UiServer", "UiState"]
