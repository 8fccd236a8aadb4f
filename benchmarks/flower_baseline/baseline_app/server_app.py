"""ServerApp: Flower's built-in FedAvg strategy with a centralized evaluation (Flower's example shape)."""

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from baseline_app.task import Net, load_test, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    num_rounds = cfg["num-server-rounds"]
    torch.manual_seed(cfg["seed"])
    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())
    nodes = len(list(grid.get_node_ids())) or 2
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes)

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = Net()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(model, load_test(nodes, cfg["seed"]))
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    result = strategy.start(grid=grid, initial_arrays=arrays, train_config=ConfigRecord({"lr": cfg["lr"]}), num_rounds=num_rounds, evaluate_fn=global_evaluate)
    if cfg["out"]:
        final = result.evaluate_metrics_serverapp[num_rounds]
        out = Path(cfg["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({"final_accuracy": final["accuracy"], "final_loss": final["loss"], "rounds": num_rounds}))
