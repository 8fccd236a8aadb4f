"""ClientApp: load the global weights, train locally, send the weights back (Flower's example shape)."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from baseline_app.task import Net, load_data, train

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context):
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    cfg = context.run_config
    trainloader = load_data(partition_id, num_partitions, cfg["batch-size"], cfg["seed"])
    train_loss = train(model, trainloader, cfg["local-epochs"], cfg["lr"], cfg["momentum"])
    model_record = ArrayRecord(model.state_dict())
    metrics = {"train_loss": train_loss, "num-examples": len(trainloader.dataset)}
    content = RecordDict({"arrays": model_record, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
